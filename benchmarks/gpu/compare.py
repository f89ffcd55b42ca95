#!/usr/bin/env python3
"""Predicted versus measured: the memory model's figures beside what vLLM or SGLang reported, and the speed.

Reads every benchmarks/gpu/results/<queue>/<job>/result.json and serve.log (written by runner.py
on the GPU machine). The predictions are the memory model's *as it is now* for the command that
was served (predict.py: the planner sized on the CUDA total vLLM logged), so every run, plan or
baseline, keeps checking the model; what vLLM reported is read again from serve.log with
launch/engine_log.py. Prints Markdown tables; exits 1 when a predicted figure misses by more than
the tolerance (5 % by default) on any measured configuration, so it can gate a calibration.

    python3 benchmarks/gpu/compare.py [--results benchmarks/gpu/results] [--tolerance 0.05] [--json]

vLLM prints its memory figures in GiB with two decimals (10 MiB steps), so a small term such as
non-torch memory (~0.25 GiB) carries up to 2 % of rounding by itself; misses under 0.02 GiB are
not counted.

SGLang runs (result.json `engine: sglang`) are gated on what SGLang sizes from its pool — KV
tokens and DeltaNet state slots (`max_mamba_cache_size`) — and show the weights (target + MTP
draft), KV and state GiB, the MTP intermediates and draft KV, graphs and max running requests.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
from predict import predict  # noqa: E402

GiB = 1 << 30

# (label, key in predict()'s "predicted", key in its "reported", unit, counted in the 5 % gate)
FIGURES = [
    ("weights", "weights_bytes", "weights_bytes", "GiB", True),
    ("peak activation", "activation_bytes", "activation_bytes", "GiB", False),
    ("non-torch", "non_torch_bytes", "non_torch_bytes", "GiB", False),
    ("CUDA graphs (estimate, in the budget)", "cudagraph_bytes", "cudagraph_bytes", "GiB", False),
    ("CUDA graphs (captured, after KV sizing)", None, "cudagraph_captured_bytes", "GiB", False),
    ("reserve (act. + non-torch + graph estimate)", "reserve", "reserve", "GiB", True),
    ("KV cache memory", "kv_cache_bytes", "kv_cache_bytes", "GiB", True),
    ("KV cache tokens", "kv_tokens", "kv_tokens", "tokens", True),
    ("max concurrency at max len", "max_concurrency", "max_concurrency", "x", True),
    ("attention block size", "block_size", "block_size", "tokens", True),
]
# SGLang 0.5.14 (predict.predict_sglang; planner/sglang.py): gated on KV tokens and state slots.
SGLANG_FIGURES = [
    ("weights (target + MTP draft)", "weights_bytes", "weights_bytes", "GiB", False),
    ("KV cache memory (target)", "kv_cache_bytes", "kv_cache_bytes", "GiB", False),
    ("KV cache tokens", "kv_tokens", "kv_tokens", "tokens", True),
    ("DeltaNet state slots", "mamba_cache_size", "mamba_cache_size", "tokens", True),
    ("DeltaNet state memory", "mamba_cache_bytes", "mamba_cache_bytes", "GiB", False),
    ("MTP intermediate states", "intermediate_bytes", "intermediate_bytes", "GiB", False),
    ("MTP draft KV (outside the fraction)", "draft_kv_bytes", "draft_kv_bytes", "GiB", False),
    ("CUDA graphs (captured)", "cudagraph_bytes", "cudagraph_bytes", "GiB", False),
    ("max running requests", "max_running_requests", "max_running_requests", "tokens", False),
]
SMALL_ABS = {"GiB": 0.02 * GiB}   # misses smaller than this are rounding, whatever the percentage


def is_sglang(r: dict) -> bool:
    return r.get("engine") == "sglang" or (r.get("_cmp") or {}).get("engine") == "sglang"


def load_results(root: Path) -> list[dict]:
    out = []
    for f in sorted(root.glob("*/*/result.json")):
        r = json.loads(f.read_text())
        r["_queue"] = f.parent.parent.name
        r["_dir"] = f.parent
        log = f.parent / "serve.log"
        mem = r.get("memory") or {}
        if (mem.get("kv_tokens") if r.get("engine") == "sglang" else mem.get("kv_cache_bytes")) and log.exists():
            g = (r.get("gpus") or [{}])[0]
            r["_cmp"] = predict(r["served_argv"], log.read_text(errors="replace"), engine=r.get("engine"),
                                gpu=g.get("name"), gpu_mem_mib=g.get("memory_total_mib"))
        out.append(r)
    return out


def fmt(v, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "GiB":
        return f"{v / GiB:.2f}"
    if unit == "x":
        return f"{v:.2f}"
    return f"{int(v):,}"


def calibration(results: list[dict], tol: float) -> tuple[list[str], list[dict]]:
    lines, misses = [], []
    for r in results:
        if "_cmp" not in r:
            continue
        p, m, st = r["_cmp"]["predicted"], r["_cmp"]["reported"], r["_cmp"]["settings"]
        figures = FIGURES
        if is_sglang(r):
            figures = SGLANG_FIGURES
            lines.append(f"\n**{r['name']}** (SGLang {r['_cmp']['version']}, {r.get('kind')}"
                         f"{', plan `' + r['plan'] + '`' if r.get('plan') else ''}): {st['variant']}, "
                         f"{st['max_model_len']:,} tokens, max running requests {st['max_num_seqs'] or 'default'}, "
                         f"chunk {st['batched_tokens']:,}, KV {st['kv_dtype']}, MTP {st['spec'] or 'off'}, TP {st['tp']}, "
                         f"mem_fraction_static {st['mem_fraction_static']:.4g} ({st['mem_fraction_source']}), "
                         f"mamba {st['strategy']}; free before loading "
                         f"{p['pre_load_bytes'] / GiB:.2f} GiB\n")
        else:
            lines.append(f"\n**{r['name']}** ({r.get('kind')}{', plan `' + r['plan'] + '`' if r.get('plan') else ''}): "
                     f"{st['variant']}, {st['max_model_len']:,} tokens, {st['max_num_seqs']} seqs, "
                     f"{st['batched_tokens']:,} batched tokens, KV {st['kv_dtype']}, MTP {st['spec'] or 'off'}, "
                     f"TP {st['tp']}{', eager' if st['eager'] else ''}, gmu {st['gmu']}, "
                     f"CUDA total {r['_cmp']['cuda_total'] / GiB:.2f} GiB; vLLM {r['_cmp']['version']}\n")
        lines.append("| figure | predicted | measured | miss |")
        lines.append("|---|---:|---:|---:|")
        for label, pk, mk, unit, gated in figures:
            pv, mv = (p.get(pk) if pk else None), m.get(mk)
            miss = ""
            if pv is not None and mv not in (None, 0):
                rel = (pv - mv) / mv
                miss = f"{rel * 100:+.1f} %"
                small = unit in SMALL_ABS and abs(pv - mv) < SMALL_ABS[unit]
                bad = pv != mv if label == "attention block size" else abs(rel) > tol and not small
                if bad and gated:
                    miss += " **MISS**"
                    misses.append({"job": r["name"], "figure": label, "predicted": pv, "measured": mv,
                                   "relative": round(rel, 4)})
            lines.append(f"| {label} | {fmt(pv, unit)} | {fmt(mv, unit)} | {miss} |")
    return lines, misses


def summary(results: list[dict]) -> list[str]:
    """One line per run: the gated figures' misses."""
    lines = ["| run | GPU | block pred / meas | weights | reserve | KV memory GiB pred / meas | KV tokens pred / meas "
             "| concurrency pred / meas |", "|---|---|---|---:|---:|---|---|---|"]

    def rel(p, m, k):
        return f"{(p[k] - m[k]) / m[k] * 100:+.1f} %"
    for r in results:
        if "_cmp" not in r or is_sglang(r):
            continue
        p, m = r["_cmp"]["predicted"], r["_cmp"]["reported"]
        gpu = ((r.get("gpus") or [{}])[0]).get("name", r["_queue"]).replace("NVIDIA ", "")
        lines.append(f"| {r['name']} | {gpu} | {p['block_size']:,} / {m['block_size']:,} | {rel(p, m, 'weights_bytes')} | "
                     f"{rel(p, m, 'reserve')} | {p['kv_cache_bytes'] / GiB:.2f} / {m['kv_cache_bytes'] / GiB:.2f} "
                     f"({rel(p, m, 'kv_cache_bytes')}) | {p['kv_tokens']:,} / {m['kv_tokens']:,} ({rel(p, m, 'kv_tokens')}) | "
                     f"{p['max_concurrency']:.2f} / {m['max_concurrency']:.2f} ({rel(p, m, 'max_concurrency')}) |")
    return lines


def sglang_summary(results: list[dict]) -> list[str]:
    """One line per SGLang run: the gated figures (KV tokens, state slots) and what they run."""
    lines = ["| run | GPU | fraction | weights GiB pred / meas | KV GiB pred / meas | KV tokens pred / meas | "
             "state slots pred / meas | max running requests pred / meas |", "|---|---|---:|---|---|---|---|---|"]

    def pair(p, m, k, unit):
        mv = m.get(k)
        miss = f" ({(p[k] - mv) / mv * 100:+.1f} %)" if mv else ""
        return f"{fmt(p.get(k), unit)} / {fmt(mv, unit)}{miss}"
    for r in results:
        if "_cmp" not in r or not is_sglang(r):
            continue
        p, m, st = r["_cmp"]["predicted"], r["_cmp"]["reported"], r["_cmp"]["settings"]
        gpu = ((r.get("gpus") or [{}])[0]).get("name", r["_queue"]).replace("NVIDIA ", "")
        lines.append(f"| {r['name']} | {gpu} | {st['mem_fraction_static']:.4g} | {pair(p, m, 'weights_bytes', 'GiB')} | "
                     f"{pair(p, m, 'kv_cache_bytes', 'GiB')} | {pair(p, m, 'kv_tokens', 'tokens')} | "
                     f"{pair(p, m, 'mamba_cache_size', 'tokens')} | {pair(p, m, 'max_running_requests', 'tokens')} |")
    return lines


def measured_only(results: list[dict]) -> list[str]:
    """Every run's own figures."""
    lines = ["| job | max_num_seqs | block | weights | activation | non-torch | graphs est. / captured | KV memory | "
             "KV tokens | max conc. |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "_cmp" not in r or is_sglang(r):
            continue
        m, st = r["_cmp"]["reported"], r["_cmp"]["settings"]
        lines.append(f"| {r['name']} | {st['max_num_seqs']} | {fmt(m.get('block_size'), 'tokens')} | "
                     f"{fmt(m.get('weights_bytes'), 'GiB')} | {fmt(m.get('activation_bytes'), 'GiB')} | "
                     f"{fmt(m.get('non_torch_bytes'), 'GiB')} | {fmt(m.get('cudagraph_bytes'), 'GiB')} / "
                     f"{fmt(m.get('cudagraph_captured_bytes'), 'GiB')} | {fmt(m.get('kv_cache_bytes'), 'GiB')} | "
                     f"{fmt(m.get('kv_tokens'), 'tokens')} | {fmt(m.get('max_concurrency'), 'x')} |")
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

        def t(k, f, lv=lv):
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
        print("### Memory model: predicted vs measured, every run\n")
        print("\n".join(summary(results)))
        if any(is_sglang(r) and "_cmp" in r for r in results):
            print("\n### SGLang: predicted vs measured (gated: KV tokens, state slots)\n")
            print("\n".join(sglang_summary(results)))
        print("\n### Every figure, per run")
        print("\n".join(cal) if cal else "\n(no run measured)")
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
