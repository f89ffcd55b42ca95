#!/usr/bin/env bash
# qwenplan: Qwen/Qwen3.6-35B-A3B-FP8 on sglang 0.5.23
# GPUs: 2 nodes x 4
# Multi-node: 2 nodes x 4 GPUs (tensor parallel 4 within a node, pipeline parallel 2 across nodes).
# Run this same script on every node: QWENPLAN_NODE_RANK=0 on the head, 1..1 on the others,
# and QWENPLAN_HEAD_ADDR=<the head node's IP> on all of them.
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

QWENPLAN_NODE_RANK="${QWENPLAN_NODE_RANK:-0}"
QWENPLAN_HEAD_ADDR="${QWENPLAN_HEAD_ADDR:?set QWENPLAN_HEAD_ADDR to the head node address}"
case "$QWENPLAN_NODE_RANK" in
  0|1) ;;
  *) echo "QWENPLAN_NODE_RANK must be 0..1" >&2; exit 2 ;;
esac

if [ "$QWENPLAN_NODE_RANK" = 0 ]; then
  exec python3 -m sglang.launch_server \
    --model-path Qwen/Qwen3.6-35B-A3B-FP8 \
    --served-model-name qwen3.6-35b-a3b \
    --host 127.0.0.1 \
    --port 30000 \
    --tp-size 4 \
    --context-length 262144 \
    --mem-fraction-static 0.88 \
    --reasoning-parser qwen3 \
    --tool-call-parser qwen3_coder \
    --api-key "${SGLANG_API_KEY:?SGLANG_API_KEY is not set}" \
    --pp-size 2 \
    --nnodes 2 \
    --node-rank 0 \
    --dist-init-addr "${QWENPLAN_HEAD_ADDR:?QWENPLAN_HEAD_ADDR is not set}":20000
else
  exec python3 -m sglang.launch_server \
    --model-path Qwen/Qwen3.6-35B-A3B-FP8 \
    --served-model-name qwen3.6-35b-a3b \
    --host 127.0.0.1 \
    --port 30000 \
    --tp-size 4 \
    --context-length 262144 \
    --mem-fraction-static 0.88 \
    --reasoning-parser qwen3 \
    --tool-call-parser qwen3_coder \
    --api-key "${SGLANG_API_KEY:?SGLANG_API_KEY is not set}" \
    --pp-size 2 \
    --nnodes 2 \
    --node-rank "${QWENPLAN_NODE_RANK:?QWENPLAN_NODE_RANK is not set}" \
    --dist-init-addr "${QWENPLAN_HEAD_ADDR:?QWENPLAN_HEAD_ADDR is not set}":20000
fi
