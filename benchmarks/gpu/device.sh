#!/usr/bin/env bash
# Steps run on the GPU machine through the device tool (see README.md: "The sequence").
#   recv DIR            copy one carried part of the engine bundle into /tmp/xfer
#   install             reassemble the bundle into /tmp/site (vLLM 0.26.0 + its extra packages),
#                       install the carried qwenplan wheel into /tmp/qp, check both import
#   install-sglang [jit] reassemble the SGLang 0.5.14 bundle (sgsite.tar.xz.part*) into /tmp/sgsite,
#                       check its sha256, print the versions and import every serving module;
#                       "jit" also runs one SGLang tvm-ffi JIT kernel (nvcc) on the GPU
#   probe NAME          qwenplan probe --json > $OUT/NAME-probe.json; qwenplan doctor
#   tick QUEUE SECONDS  (re)start the detached job runner for jobs/QUEUE.json if jobs remain,
#                       wait up to SECONDS for it, then pack /tmp/gpu-results/QUEUE into $OUT
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export PYTHONUNBUFFERED=1
SITE=${SITE:-/tmp/site}
SGSITE=${SGSITE:-/tmp/sgsite}
# SGLang runs (README.md, "Carrying SGLang 0.5.14"): FlashInfer is carried only for an import, so it is
# switched off as if absent; DeepGEMM is not carried (its FP8 precompile takes 10-20 min at start)
# (flags: --attention-backend triton --sampling-backend pytorch). CUDA_HOME: SGLang's own kernels are
# compiled by apache-tvm-ffi, which otherwise guesses it from `which nvcc` and links -lcudart from there
# (a /usr/local/bin/nvcc wrapper gives /usr/local/lib64: "cannot find -lcudart", seen on the prep box)
sgl_env() {
  export PYTHONPATH=$SGSITE SGLANG_IS_FLASHINFER_AVAILABLE=false SGLANG_ENABLE_JIT_DEEPGEMM=0 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  if [ -z "${CUDA_HOME:-}" ] && [ -e /usr/local/cuda/lib64/libcudart.so ]; then export CUDA_HOME=/usr/local/cuda; fi
}
site_env() { export PYTHONPATH=$SITE VLLM_USE_FLASHINFER_SAMPLER=0 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1; }
cmd=${1:-}; shift || true
case "$cmd" in
recv)
  mkdir -p /tmp/xfer && cp "$REPO/$1"/* /tmp/xfer/ && ls -la /tmp/xfer
  if [ ! -f /tmp/xfer/.seen ]; then
    touch /tmp/xfer/.seen
    nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version --format=csv
    python3 -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0))'
    df -h /tmp | tail -1; which xz zstd nvcc; echo "CUDA_HOME=${CUDA_HOME:-}"; ls -d /usr/local/cuda* 2>/dev/null
  fi ;;
install)
  t=$(date +%s)
  # the bundle in parts: site.tar.xz.part* (xz) or site.tar.gz.<n> (gzip, faster to pack on a busy box)
  parts=$(ls /tmp/xfer/site.tar.xz.part* 2>/dev/null || ls /tmp/xfer/site.tar.gz.[0-9]* 2>/dev/null)
  case "$parts" in *.gz.*) unz="gzip -dc" ;; *) unz="xz -dc -T0" ;; esac
  (cat $parts | sha256sum | cut -c1-64 > /tmp/xfer/got.sha && cut -c1-64 /tmp/xfer/site.sha256 | diff - /tmp/xfer/got.sha) || { echo "bundle checksum differs"; exit 1; }
  mkdir -p /tmp/site
  cat $parts | $unz | tar -x -C /tmp/site
  echo "bundle unpacked in $(( $(date +%s) - t )) s: $(du -sh /tmp/site | cut -f1)"
  python3 -m pip install -q --no-deps --no-index --no-compile --target /tmp/qp /tmp/xfer/qwenplan-*.whl 2>&1 | tail -3
  site_env
  python3 -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)' 2>&1 | tail -2
  PYTHONPATH=/tmp/qp:$SITE python3 -c 'import qwenplan.launch.cli; print("qwenplan ok")' 2>&1 | tail -2
  echo "install done in $(( $(date +%s) - t )) s" ;;
install-sglang)
  t=$(date +%s)
  # part names start with "sgsite" so that they never mix with the vLLM bundle's site.* parts
  parts=$(ls /tmp/xfer/sgsite.tar.xz.part* 2>/dev/null)
  [ -n "$parts" ] && [ -f /tmp/xfer/sgsite.sha256 ] || { echo "SGLang parts or sgsite.sha256 missing in /tmp/xfer"; ls /tmp/xfer; exit 1; }
  (cat $parts | sha256sum | cut -c1-64 > /tmp/xfer/sg-got.sha && cut -c1-64 /tmp/xfer/sgsite.sha256 | diff - /tmp/xfer/sg-got.sha) || { echo "SGLang bundle checksum differs"; exit 1; }
  rm -rf "$SGSITE" && mkdir -p "$SGSITE"
  cat $parts | xz -dc -T0 | tar -x -C "$SGSITE"
  # sgl_kernel 0.4.4 hands RMSNorm to FlashInfer whenever `import flashinfer.norm` works, and FlashInfer
  # then JIT-compiles it from csrc/ that the bundle does not carry (ninja: 'flashinfer/data/csrc/norm.cu
  # ... missing'; results/h200-sglang-r2-failed/): sgl_kernel keeps its own precompiled sm90 norms.
  sed -i 's/^    import flashinfer.norm as _flashinfer_norm$/    raise ImportError("flashinfer JIT sources not carried")/' "$SGSITE/sgl_kernel/elementwise.py"
  grep -q "JIT sources not carried" "$SGSITE/sgl_kernel/elementwise.py" || { echo "sgl_kernel norm patch failed"; exit 1; }
  echo "SGLang bundle unpacked in $(( $(date +%s) - t )) s: $(du -sh "$SGSITE" | cut -f1)"
  if ls /tmp/xfer/qwenplan-*.whl >/dev/null 2>&1 && [ ! -d /tmp/qp/qwenplan ]; then
    python3 -m pip install -q --no-deps --no-index --no-compile --target /tmp/qp /tmp/xfer/qwenplan-*.whl 2>&1 | tail -3
  fi
  sgl_env
  which nvcc; nvcc --version | tail -2; echo "CUDA_HOME=${CUDA_HOME:-}"
  python3 "$HERE/sglang_imports.py" --args --model-path "$HERE/configs/fp8" --load-format dummy --skip-tokenizer-init \
    --attention-backend triton --sampling-backend pytorch 2>&1 | grep -v "Ignore import error when loading sglang.srt.models.mimo"
  rc=${PIPESTATUS[0]}
  if [ "${1:-}" = jit ]; then
    # one of SGLang's tvm-ffi JIT kernels (nvcc at first use, cached in ~/.cache/tvm-ffi): shows the toolchain works
    python3 -c 'import time, torch; t=time.time(); from sglang.jit_kernel.norm import fused_add_rmsnorm as f
x=torch.randn(4,2048,device="cuda",dtype=torch.bfloat16); r=torch.randn_like(x); w=torch.ones(2048,device="cuda",dtype=torch.bfloat16)
f(x, r, w, 1e-6); torch.cuda.synchronize(); print(f"jit fused_add_rmsnorm ok in {time.time()-t:.0f} s")' 2>&1 | tail -4
  fi
  echo "install-sglang done in $(( $(date +%s) - t )) s (imports rc=$rc)"; exit "$rc" ;;
probe)
  site_env; export PYTHONPATH=/tmp/qp:$SITE
  python3 -c 'from qwenplan.launch.cli import main; main()' probe --json > "$OUT/$1-probe.json" 2> "$OUT/$1-probe.err"; echo "probe rc=$?"; head -c 600 "$OUT/$1-probe.json"; echo
  python3 -c 'from qwenplan.launch.cli import main; main()' plan --json --engine vllm --engine-version 0.26.0 > "$OUT/$1-plan-probed.json" 2>&1; echo "plan from the probe rc=$?"
  timeout 120 python3 -c 'from qwenplan.launch.cli import main; main()' doctor --engine vllm --engine-version 0.26.0 > "$OUT/$1-doctor.txt" 2>&1; echo "doctor rc=$?"; tail -25 "$OUT/$1-doctor.txt" ;;
tick)
  Q=$1; WAIT=${2:-500}; R=/tmp/gpu-results/$Q; mkdir -p "$R"
  # an SGLang queue (jobs file "engine": "sglang") runs from /tmp/sgsite: runner.py serves from $SITE
  if grep -qE '"engine": *"sglang"' "$HERE/jobs/$Q.json"; then
    export SITE=${SGSITE:-/tmp/sgsite}
    if type sgl_env >/dev/null 2>&1; then sgl_env; else export PYTHONPATH=$SITE; fi   # sgl_env: install-sglang's
  else site_env; fi
  t=$(date +%s)
  running() { [ -f "$R/runner.pid" ] && kill -0 "$(cat "$R/runner.pid")" 2>/dev/null; }
  if ! running; then
    setsid nohup python3 "$HERE/runner.py" --jobs "benchmarks/gpu/jobs/$Q.json" --results "$R" >> "$R/runner.log" 2>&1 < /dev/null &
    echo $! > "$R/runner.pid"; echo "runner started: pid $(cat "$R/runner.pid")"
  fi
  while running && [ $(( $(date +%s) - t )) -lt "$WAIT" ]; do sleep 5; done
  tail -12 "$R/runner.log"
  cur=$(ls -td "$R"/*/ 2>/dev/null | head -1)
  [ -n "$cur" ] && { echo "== $cur"; grep -aE "Model loading took|Available KV|GPU KV cache size|Maximum concurrency|Actual usage|CUDA graph memory|Graph capturing|Load weight end|KV Cache is allocated|Mamba Cache is allocated|Capture cuda graph end|max_total_num_tokens=|Error|error:" "$cur/serve.log" 2>/dev/null | cut -c1-330 | tail -12; tail -3 "$cur/load.out" 2>/dev/null; }
  tar -czf "$OUT/results-$Q.tgz" -C /tmp/gpu-results "$Q"; ls -la "$OUT"
  running && echo "RUNNER STILL RUNNING" || echo "RUNNER IDLE" ;;
*) echo "usage: device.sh recv DIR | install | install-sglang [jit] | probe NAME | tick QUEUE SECONDS"; exit 2 ;;
esac
