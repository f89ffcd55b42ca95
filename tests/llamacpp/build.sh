#!/usr/bin/env bash
# Build llama-server for the CPU from a pinned llama.cpp source, for the end-to-end tests.
#
# The source is the llama.cpp that llama-cpp-python 0.3.36 vendors (its PyPI sdist, checked by
# SHA-256): llama.cpp commit 0c1e57098 = release b11312, which serves the qwen35moe architecture.
# Only the llama-server target is built, Release, CPU only, with two jobs.
#
#   tests/llamacpp/build.sh            # prints the path of llama-server on its last line
#   QWENPLAN_LLAMA_SERVER=$(tests/llamacpp/build.sh) pytest tests/test_llamacpp.py
#
# The result lives outside the repository (QWENPLAN_LLAMACPP_PREFIX, default
# ~/.cache/qwenplan/llama.cpp-b11312) and is reused when it is already there.
set -euo pipefail

SDIST_VERSION=0.3.36
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
BUILD_NUMBER=11312
COMMIT=0c1e570
PREFIX=${QWENPLAN_LLAMACPP_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/qwenplan/llama.cpp-b$BUILD_NUMBER}
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-2}
SERVER="$PREFIX/bin/llama-server"

if [ -x "$SERVER" ] && "$SERVER" --version 2>&1 | grep -q "build $BUILD_NUMBER, commit $COMMIT"; then
  echo "llama-server b$BUILD_NUMBER already built" >&2
  echo "$SERVER"
  exit 0
fi
for tool in cmake c++ tar; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is needed (apt-get install cmake g++)" >&2; exit 2; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
"$PYTHON" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$SDIST_VERSION" -d "$work" >&2
sdist="$work/llama_cpp_python-$SDIST_VERSION.tar.gz"
echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet - >&2
tar -xzf "$sdist" -C "$work" "llama_cpp_python-$SDIST_VERSION/vendor/llama.cpp"
src="$work/llama_cpp_python-$SDIST_VERSION/vendor/llama.cpp"

generator=(); command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$src" -B "$work/build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_NUMBER=$BUILD_NUMBER -DLLAMA_BUILD_COMMIT=$COMMIT \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON >&2
cmake --build "$work/build" --target llama-server -j "$JOBS" >&2
mkdir -p "$PREFIX/bin"
install -m 0755 "$work/build/bin/llama-server" "$SERVER.tmp"
mv "$SERVER.tmp" "$SERVER"
echo "built llama-server b$BUILD_NUMBER in $(( $(date +%s) - start )) s" >&2
echo "$SERVER"
