#!/usr/bin/env bash
# qwenplan: Qwen/Qwen3.6-35B-A3B-FP8 on vllm 0.32.0
# GPUs: 1 (ids 0)
# Health: curl -fsS http://127.0.0.1:8000/health answers 200 once the model is loaded
# (138 s on an H100 with the weights cached; a first start downloads the checkpoint first).
# Secrets (VLLM_API_KEY, HF_TOKEN) are never written here: they are read from the env file
# below when it exists: lines of NAME=value, no quotes (the format of systemd's EnvironmentFile=).
set -euo pipefail

QWENPLAN_ENV_FILE="${QWENPLAN_ENV_FILE:-}"
[ -n "$QWENPLAN_ENV_FILE" ] || QWENPLAN_ENV_FILE="$HOME/.config/qwenplan/qwen.env"
if [ -f "$QWENPLAN_ENV_FILE" ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    line="${line%$'\r'}"
    case "$line" in ''|'#'*) continue ;; esac
    name="${line%%=*}"
    if [[ ! "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [ "$name" = "$line" ]; then
      echo "$QWENPLAN_ENV_FILE: ignoring a line that is not NAME=value" >&2
      continue
    fi
    export "$name=${line#*=}"
  done < "$QWENPLAN_ENV_FILE"
fi

export CUDA_VISIBLE_DEVICES=GPU-0a1b2c3d-0000-0000-0000-000000000000

exec vllm serve Qwen/Qwen3.6-35B-A3B-FP8 \
  --served-model-name qwen3.6-35b-a3b \
  --host 127.0.0.1 \
  --port 8000 \
  --max-model-len 262144 \
  --max-num-seqs 32 \
  --gpu-memory-utilization 0.92 \
  --reasoning-parser qwen3 \
  --enable-auto-tool-choice \
  --tool-call-parser qwen3_coder \
  --speculative-config '{"method": "mtp", "num_speculative_tokens": 2}'
