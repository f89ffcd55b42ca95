#!/usr/bin/env bash
# `qwenplan verify` on the GPU machine with the carried vLLM 0.26.0 (issue 17, item 8): offline,
# with only config.json in the Hugging Face cache, as a user without the weights would run it.
# Everything qwenplan writes (its output, the run log, the stored calibration) is copied to $OUT.
#   verify_vllm.sh NAME [qwenplan verify options...]
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
NAME=$1; shift
SITE=${SITE:-/tmp/site}
export HF_HOME=/tmp/vhf HF_HUB_OFFLINE=1 XDG_STATE_HOME=/tmp/vstate PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/qp:$SITE VLLM_USE_FLASHINFER_SAMPLER=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# config.json of each checkpoint the plan may pick, in the hub cache's layout (no weights, no tokenizer)
for pair in "Qwen/Qwen3.6-35B-A3B:bf16" "Qwen/Qwen3.6-35B-A3B-FP8:fp8"; do
  repo=${pair%%:*}; dir=$HF_HOME/hub/models--${repo//\//--}
  mkdir -p "$dir/snapshots/dummy" "$dir/refs"
  cp "$HERE/configs/${pair##*:}/config.json" "$dir/snapshots/dummy/"
  printf dummy > "$dir/refs/main"
done
# the engine as a user has it: a `vllm` program on PATH (the bundle is a --target folder without one)
mkdir -p /tmp/vbin
printf '#!/usr/bin/env python3\nimport sys\nfrom vllm.entrypoints.cli.main import main\nsys.exit(main())\n' > /tmp/vbin/vllm
chmod +x /tmp/vbin/vllm
export PATH=/tmp/vbin:$PATH
qp() { python3 -c 'from qwenplan.launch.cli import main; main()' "$@"; }
mkdir -p "$OUT/$NAME"
qp verify "$@" > "$OUT/$NAME/verify.out" 2>&1; rc=$?
echo "verify rc=$rc" | tee -a "$OUT/$NAME/verify.out"
cat "$OUT/$NAME/verify.out"
# the stored calibration and the engine's log of the run
tar -czf "$OUT/$NAME/state.tgz" -C /tmp/vstate . 2>/dev/null
qp explain "$@" > "$OUT/$NAME/explain-after.out" 2>&1; echo "explain after verify rc=$?"
head -30 "$OUT/$NAME/explain-after.out"
