#!/usr/bin/env bash
# Write the plan documents the GPU runs serve (run here, before the device calls; qwenplan installed).
# Plans are what-ifs for the GPU model the run takes place on (--gpu NAME): the device machine
# does not need qwenplan, and the same files are what compare.py reads the predictions from.
set -eu
cd "$(dirname "$0")"
V=${ENGINE_VERSION:-0.26.0}
SGV=${SGLANG_VERSION:-0.5.14}
ONLY=${1:-}   # e.g. "h200/" to remake only those plans
ENGINE=vllm
qp() { case "$1" in "$ONLY"*) ;; *) return 0 ;; esac; out=plans/$1.json; shift; mkdir -p "$(dirname "$out")"
       if [ "$ENGINE" = sglang ]; then set -- --engine sglang --engine-version "$SGV" --no-calibration "$@"
       else set -- --engine vllm --engine-version "$V" "$@"; fi
       qwenplan plan --json "$@" > "$out" || { echo "plan $out failed"; exit 1; }
       python3 - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); s = d["settings"]; m = d["memory"]
print(f"{sys.argv[1]}: {d['status']} {d['variant']['id']} len={s['max_model_len']} seqs={s['max_num_seqs']} "
      f"kv={s['kv_cache_dtype']} spec={s['speculative']} tp={s['tensor_parallel']} dp={s['data_parallel']} "
      f"kv_bytes={m['kv_cache_bytes']} kv_tokens={m.get('kv_cache_tokens')}"
      + (f" fraction={s['mem_fraction_static']} slots={m['sglang']['mamba_slots']}" if m.get("sglang") else ""))
PY
}
# Round 1 (2026-11-23, first session; the memory model before calibration) served plans/h100/,
# plans/h200/ — kept as they were served, not remade:
#   h100/default --gpu H100 | h100/bf16 --variant bf16 | h100/mtp --mtp | h100/throughput --goal throughput
#   h200/default --gpu H200 | h200/fp8kv --kv-dtype fp8 | h200/fp8 --variant fp8 | h200/nomtp --no-mtp
# Round 2: plans of the calibrated model (profiles/memory.yaml), checked out of sample.
qp h100-r2/default    --gpu H100
qp h100-r2/throughput --gpu H100 --goal throughput
qp h100-r2/fp8kv      --gpu H100 --kv-dtype fp8
qp h100-r2/long       --gpu H100 --goal long-context
qp h200-r2/default    --gpu H200
qp h200-r2/nomtp      --gpu H200 --no-mtp
qp h200-r2/fp8        --gpu H200 --variant fp8
qp h200x2/default     --gpu H200 --gpus 2
qp h200x2/tp2         --gpu H200 --gpus 2 --goal long-context
# Round 3: plans chosen by predicted speed (planner/speed.py), one H200 machine with the baselines.
qp h200-r3/balanced   --gpu H200
qp h200-r3/throughput --gpu H200 --goal throughput
qp h200-r3/bf16-mtp   --gpu H200 --variant bf16 --mtp
# SGLang 0.5.14 on one H200 (issue 19): the plans of its memory model alone (--no-calibration: no
# engine report stored on this box changes them), served with jobs/h200-sglang.json.
ENGINE=sglang
qp h200-sglang/balanced   --gpu H200
qp h200-sglang/fp8kv      --gpu H200 --kv-dtype fp8
qp h200-sglang/long       --gpu H200 --goal long-context
qp h200-sglang/bf16-mtp   --gpu H200 --variant bf16 --mtp
