#!/usr/bin/env bash
# qwenplan: Qwen/Qwen3.6-35B-A3B on vllm 0.32.0
# GPUs: 2 nodes x 4
# Multi-node: 2 nodes x 4 GPUs (tensor parallel 4 within a node, pipeline parallel 2 across nodes).
# Run this same script on every node: QWENPLAN_NODE_RANK=0 on the head, 1..1 on the others,
# and QWENPLAN_HEAD_ADDR=<the head node's IP> on all of them.
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

QWENPLAN_NODE_RANK="${QWENPLAN_NODE_RANK:-0}"
QWENPLAN_HEAD_ADDR="${QWENPLAN_HEAD_ADDR:?set QWENPLAN_HEAD_ADDR to the head node address}"
case "$QWENPLAN_NODE_RANK" in
  0|1) ;;
  *) echo "QWENPLAN_NODE_RANK must be 0..1" >&2; exit 2 ;;
esac

if [ "$QWENPLAN_NODE_RANK" = 0 ]; then
  exec vllm serve Qwen/Qwen3.6-35B-A3B \
    --served-model-name qwen3.6-35b-a3b \
    --host 127.0.0.1 \
    --port 8000 \
    --max-model-len 262144 \
    --tensor-parallel-size 4 \
    --pipeline-parallel-size 2 \
    --reasoning-parser qwen3 \
    --enable-auto-tool-choice \
    --tool-call-parser qwen3_coder \
    --speculative-config '{"method": "mtp", "num_speculative_tokens": 2}' \
    --distributed-executor-backend mp \
    --nnodes 2 \
    --node-rank 0 \
    --master-addr "${QWENPLAN_HEAD_ADDR:?QWENPLAN_HEAD_ADDR is not set}"
else
  exec vllm serve Qwen/Qwen3.6-35B-A3B \
    --served-model-name qwen3.6-35b-a3b \
    --host 127.0.0.1 \
    --port 8000 \
    --max-model-len 262144 \
    --tensor-parallel-size 4 \
    --pipeline-parallel-size 2 \
    --reasoning-parser qwen3 \
    --enable-auto-tool-choice \
    --tool-call-parser qwen3_coder \
    --speculative-config '{"method": "mtp", "num_speculative_tokens": 2}' \
    --distributed-executor-backend mp \
    --nnodes 2 \
    --node-rank "${QWENPLAN_NODE_RANK:?QWENPLAN_NODE_RANK is not set}" \
    --master-addr "${QWENPLAN_HEAD_ADDR:?QWENPLAN_HEAD_ADDR is not set}" \
    --headless
fi
