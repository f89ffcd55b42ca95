#!/usr/bin/env bash
# qwenplan: Qwen/Qwen3.6-35B-A3B-FP8 on sglang 0.5.23
# GPUs: 2 (ids 0,1)
# Health: curl -fsS http://127.0.0.1:30000/health answers 200 once the model is loaded
# (138 s on an H100 with the weights cached; a first start downloads the checkpoint first).
# Secrets (HF_TOKEN, SGLANG_API_KEY) are never written here: they are read from the env file
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

export SGLANG_ENABLE_SPEC_V2=1
export CUDA_VISIBLE_DEVICES=GPU-11111111-2222-3333-4444-555555555555,GPU-66666666-7777-8888-9999-000000000000

exec python3 -m sglang.launch_server \
  --model-path Qwen/Qwen3.6-35B-A3B-FP8 \
  --served-model-name qwen3.6-35b-a3b \
  --host 127.0.0.1 \
  --port 30000 \
  --tp-size 2 \
  --context-length 262144 \
  --mem-fraction-static 0.88 \
  --reasoning-parser qwen3 \
  --tool-call-parser qwen3_coder \
  --speculative-algorithm EAGLE \
  --speculative-num-steps 3 \
  --speculative-eagle-topk 1 \
  --speculative-num-draft-tokens 4 \
  --api-key "${SGLANG_API_KEY:?SGLANG_API_KEY is not set}"
