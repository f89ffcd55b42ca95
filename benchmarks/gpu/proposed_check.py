#!/usr/bin/env python3
"""Check a proposed set of vLLM reserve constants against every measured run (no planner edits).

For each run in benchmarks/gpu/results, rebuild vLLM's numbers from its own settings with:
  budget      = gpu_memory_utilization x CUDA total (vLLM's "Free memory on device (x/TOTAL GiB)")
  weights     = as measured (the catalog already matches within 0.1 %)
  activation  = max(F(batched tokens, format), S(max_num_seqs)) + MTP drafter
  non-torch   = 0.25 GiB
  graphs      = 0.155 GiB + 0.00095 GiB x largest capture size (min(2 x seqs x (1 + spec), 512, batched tokens))
  KV layout   = planner.memory.vllm_layout with a float32 recurrent state (the config's mamba_ssm_dtype),
                and 1 + num_spec state blocks per DeltaNet group and request under MTP
and print predicted vs measured KV memory, tokens and concurrency.

    python3 benchmarks/gpu/proposed_check.py
"""
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))
GiB = 1 << 30

from planner.memory import vllm_layout          # noqa: E402
from planner.model import shape_from_config     # noqa: E402

SHAPE = shape_from_config(json.loads((HERE / "configs" / "bf16" / "config.json").read_text()))
ACT_BASE = int(0.81 * GiB)            # F at 0 batched tokens (BF16)
ACT_PER_TOKEN = 57_700                # bytes per batched token (BF16: 1.03 GiB at 4096, 1.25 at 8192)
ACT_FP8_DELTA = -int(0.07 * GiB)      # FP8 checkpoint: 1.18 GiB at 8192
SAMPLER_PER_SEQ = int(4.01 * GiB / 1024)   # the dummy sampler run over max_num_seqs rows of 248,320 logits
MTP_DRAFTER = int(0.47 * GiB)
NON_TORCH = int(0.25 * GiB)
GRAPH_BASE, GRAPH_PER_SIZE = 0.155 * GiB, 0.00095 * GiB


def arg(argv, flag, default=None):
    return argv[argv.index(flag) + 1] if flag in argv else default


def main() -> int:
    rows = []
    for f in sorted((HERE / "results").glob("*/*/result.json")):
        r = json.loads(f.read_text())
        m = r.get("memory") or {}
        if not m.get("kv_cache_bytes"):
            continue
        argv = r["served_argv"]
        log = (f.parent / "serve.log").read_text(errors="replace")
        total = float(re.search(r"Free memory on device \([0-9.]+/([0-9.]+) GiB\)", log).group(1)) * GiB
        gmu = float(arg(argv, "--gpu-memory-utilization", 0.92))
        seqs = int(arg(argv, "--max-num-seqs", 1024))
        mbt = int(arg(argv, "--max-num-batched-tokens", 8192))
        spec = json.loads(arg(argv, "--speculative-config", "{}")).get("num_speculative_tokens", 0)
        kv_dtype = "fp8" if arg(argv, "--kv-cache-dtype", "auto") == "fp8" else "bfloat16"
        fp8 = "/fp8" in argv[0]
        act = max(ACT_BASE + ACT_PER_TOKEN * mbt + (ACT_FP8_DELTA if fp8 else 0), SAMPLER_PER_SEQ * seqs)
        act += MTP_DRAFTER if spec else 0
        cap = min(2 * seqs * (1 + spec), 512, mbt)
        graphs = int(GRAPH_BASE + GRAPH_PER_SIZE * cap)
        kv = int(gmu * total) - m["weights_bytes"] - act - NON_TORCH - graphs
        lay = vllm_layout(SHAPE, kv_dtype=kv_dtype, ssm_dtype="float32", num_spec=spec,
                          extra_attention_layers=1 if spec else 0)
        max_len = int(arg(argv, "--max-model-len", 262144))
        # With speculative decoding each DeltaNet group holds 1 + num_spec state blocks per request
        # (vLLM's MambaSpec num_speculative_blocks), which memory.VllmLayout does not count yet.
        per_req = -(-max_len // lay.block_size) * lay.attention_groups + lay.state_groups * (1 + spec)
        blocks = kv // lay.block_bytes
        tokens = blocks * max_len // per_req
        conc = blocks / per_req
        tok_meas = (m["kv_cache_bytes"] // lay.block_bytes) * max_len // per_req
        rows.append((r["name"], lay.block_size, m.get("block_size"), act / GiB, m["activation_bytes"] / GiB,
                     graphs / GiB, kv / GiB, m["kv_cache_bytes"] / GiB, tokens, m["kv_tokens"], tok_meas, conc,
                     m.get("max_concurrency")))
    print("| run | block pred/meas | activation pred/meas | graphs pred | KV GiB pred/meas (miss) | KV tokens pred/meas (miss) "
          "| tokens from measured KV | conc. pred/meas |")
    print("|---|---|---|---:|---|---|---:|---|")
    worst = 0.0
    for (n, bp, bm, ap, am, g, kp, km, tp, tm, tmm, cp, cm) in rows:
        mk, mt = (kp - km) / km, (tp - tm) / tm
        worst = max(worst, abs(mk), abs(mt))
        print(f"| {n} | {bp} / {bm} | {ap:.2f} / {am:.2f} | {g:.2f} | {kp:.2f} / {km:.2f} ({mk:+.1%}) | "
              f"{tp:,} / {tm:,} ({mt:+.1%}) | {tmm:,} | {cp:.2f} / {cm} |")
    print(f"\nworst KV miss with the proposed constants: {worst:.1%}")
    return 0 if worst <= 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
