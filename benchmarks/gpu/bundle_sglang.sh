#!/usr/bin/env bash
# Builds, here (no GPU), the SGLang 0.5.14 bundle the GPU machine needs to serve Qwen3.5-MoE
# (hybrid Gated DeltaNet + attention, BF16 / block-FP8, fp8 KV, EAGLE/MTP) on one H200 (sm90)
# with --load-format dummy --skip-tokenizer-init. README.md, "Carrying SGLang 0.5.14", says
# why each package is or is not carried, and which flags the pruning imposes on the runs.
#
#   benchmarks/gpu/bundle_sglang.sh [download|site|pack|all]     (default: all)
#
# Output, in .gpuwheels-sgl/ (ignored): all/ the wheels, site/ the install --target folder,
# p1 … pN the parts (sgsite.tar.xz.partK, each <= 58 MiB) and sgsite.sha256 in the last part.
# The part names start with "sgsite" so they cannot collide with the vLLM bundle's "site.*"
# parts in the GPU machine's /tmp/xfer.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
W=${W:-$REPO/.gpuwheels-sgl}
WHEELS=$HERE/sglang-0.5.14-wheels.txt
PART_MIB=58
step=${1:-all}
mkdir -p "$W"
cd "$W"

# The GPU machine: CPython 3.12 on x86_64 manylinux (glibc 2.35+); the same tag set as vLLM's bundle.
PLAT=()
for p in manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 \
         manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do PLAT+=(--platform "$p"); done
PYTAG=(--python-version 3.12 --implementation cp --only-binary=:all:)

if [ "$step" = download ] || [ "$step" = all ]; then
  # exact name==version list (sglang-0.5.14-wheels.txt); --no-deps: the machine already has the
  # rest (torch 2.11.0, triton 3.6.0, numpy, aiohttp, requests, ... see KINDS.md)
  mkdir -p all
  python3 -m pip download -q --no-deps "${PYTAG[@]}" "${PLAT[@]}" -d all -r "$WHEELS"
fi

if [ "$step" = site ] || [ "$step" = all ]; then
  rm -rf site
  python3 -m pip install -q --no-index --no-deps --no-compile "${PYTAG[@]}" "${PLAT[@]}" --target site all/*.whl
  # Prune to what Hopper (sm90) loads with the chosen backends:
  # sgl_kernel/load_utils.py loads sm90/common_ops on compute capability 9.0; sm100/ is for every other GPU
  rm -rf site/sgl_kernel/sm100
  # FA3 (1.7 GB, 946 MB of it sm90 SASS): only sgl_kernel.flash_attn imports it, i.e. only
  # --attention-backend fa3; the runs use --attention-backend triton (fits the parts budget)
  rm -f site/sgl_kernel/flash_ops.abi3.so
  # FlashMLA: only the MLA backends (DeepSeek-style models) import it
  rm -f site/sgl_kernel/flashmla_ops.abi3.so
  # jedi's 30 MB of typeshed stubs serve IPython's tab completion; sglang.utils only imports IPython.display
  rm -rf site/jedi/third_party/typeshed
  # FlashInfer's 75 MB of CUDA/CUTLASS headers and sources exist for its nvcc JIT; with
  # --sampling-backend pytorch and the triton/fa3-free backends nothing JIT-compiles FlashInfer, and
  # SGLang's own JIT kernels on this path (norm, rope, ...) declare no flashinfer/cutlass dependency
  rm -rf site/flashinfer/data
  # console scripts pip wrote with this box's interpreter path
  rm -rf site/bin
  # Not carried at all (not in the wheel list): flashinfer_cubin (prebuilt trtllm-gen/Blackwell and
  # FlashInfer-DeepGEMM cubins; nothing on this path loads them; flashinfer_python itself is carried
  # because sglang/srt/layers/sampler.py imports flashinfer.sampling unconditionally on CUDA),
  # sgl-deep-gemm (absent = SGLANG_ENABLE_JIT_DEEPGEMM=0: no 10-20 min DeepGEMM precompile at FP8 start),
  # xgrammar (the grammar backend is not created with --skip-tokenizer-init).
  du -sh site
fi

if [ "$step" = pack ] || [ "$step" = all ]; then
  rm -rf p[0-9]* sgsite.tar.xz sgsite.sha256
  # sorted names, fixed owner and time: the same site gives the same archive
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=2026-01-01 -cf - -C site . \
    | nice xz -9e -T2 > sgsite.tar.xz
  sha256sum sgsite.tar.xz | sed 's#  .*#  sgsite.tar.xz#' > sgsite.sha256
  size=$(stat -c %s sgsite.tar.xz)
  n=$(( (size + PART_MIB * 1048576 - 1) / (PART_MIB * 1048576) ))
  split -b "${PART_MIB}M" -d -a 1 sgsite.tar.xz sgsite.tar.xz.part
  for ((i = 0; i < n; i++)); do mkdir -p "p$((i + 1))"; mv "sgsite.tar.xz.part$i" "p$((i + 1))/"; done
  cp sgsite.sha256 "p$n/"
  rm sgsite.tar.xz
  echo "$n part(s) of <= $PART_MIB MiB:"; ls -l p*/
fi
