#!/usr/bin/env bash
# Compile every .cpp under plugins/trt on its own (g++ -fsyntax-only) against a folder of official
# TensorRT headers (NVIDIA/TensorRT's include/, e.g. third_party_headers/tensorrt/11.1.0 -- never
# committed) and the CUDA headers, with the plugin include folders on the path. No libnvinfer or
# GPU is needed: this is the compile bar for the plugin on machines without a TensorRT SDK.
#
# Usage: plugins/trt/check_headers.sh <tensorrt-include-dir> [generated-header-dir]
#   generated-header-dir: the folder holding qvgen/trt_plugin_contract.h (default: configure a
#   throw-away CMake build of the repository in a temp folder to generate it).
# Environment: CXX (default g++), CUDA_INCLUDE_DIR (default: from nvcc on PATH, else
# /usr/local/cuda/include).
set -euo pipefail

if [ $# -lt 1 ] || [ ! -f "$1/NvInfer.h" ]; then
  echo "usage: $0 <dir with NvInfer.h> [dir with qvgen/trt_plugin_contract.h]" >&2
  exit 2
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
trt_inc="$(cd "$1" && pwd)"
cxx="${CXX:-g++}"

# 10.12+ spell it TRT_<PART>_ENTERPRISE, older releases NV_TENSORRT_<PART>.
ver_of() {
  local v
  v="$(sed -n "s/^#define TRT_$1_ENTERPRISE \([0-9]*\).*/\1/p" "$trt_inc/NvInferVersion.h")"
  [ -n "$v" ] || v="$(sed -n "s/^#define NV_TENSORRT_$1 \([0-9]*\).*/\1/p" "$trt_inc/NvInferVersion.h")"
  echo "$v"
}
trt_version="$(ver_of MAJOR).$(ver_of MINOR).$(ver_of PATCH).$(ver_of BUILD)"

if [ -n "${CUDA_INCLUDE_DIR:-}" ]; then
  cuda_inc="$CUDA_INCLUDE_DIR"
elif command -v nvcc >/dev/null 2>&1; then
  # nvcc may be a wrapper script: ask it where its headers are.
  cuda_inc="$(nvcc --dryrun -x cu -c /dev/null 2>&1 | sed -n 's/.*INCLUDES="-I\([^"]*\)".*/\1/p' | head -1)"
  [ -f "$cuda_inc/cuda_runtime_api.h" ] || cuda_inc="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")/include"
else
  cuda_inc=/usr/local/cuda/include
fi
if [ ! -f "$cuda_inc/cuda_runtime_api.h" ]; then
  echo "check_headers.sh: cuda_runtime_api.h not found in '$cuda_inc' (set CUDA_INCLUDE_DIR)" >&2
  exit 2
fi

if [ $# -ge 2 ]; then
  gen_inc="$(cd "$2" && pwd)"
else
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  cmake -S "$repo" -B "$tmp" -DQVGEN_BUILD_CUDA=OFF >/dev/null
  gen_inc="$tmp/plugins/trt/generated"
fi
[ -f "$gen_inc/qvgen/trt_plugin_contract.h" ] || { echo "no qvgen/trt_plugin_contract.h in $gen_inc" >&2; exit 2; }

echo "check_headers.sh: TensorRT $trt_version headers ($trt_inc), CUDA headers $cuda_inc, $($cxx --version | head -1)"
status=0
while IFS= read -r src; do
  # -isystem: warnings inside TensorRT's/CUDA's own headers are theirs; ours are shown (and a
  # deprecated TensorRT API used by our code still warns).
  cmd=("$cxx" -std=c++17 -fsyntax-only -Wall -Wextra -isystem "$trt_inc" -isystem "$cuda_inc"
       -I "$repo/plugins/kernels/include" -I "$repo/plugins/trt/w4a4_linear" -I "$gen_inc" "$src")
  if "${cmd[@]}"; then
    echo "  OK    ${src#$repo/}"
  else
    echo "  FAIL  ${src#$repo/}   (${cmd[*]})"
    status=1
  fi
done < <(find "$repo/plugins/trt" -name '*.cpp' | sort)
echo "check_headers.sh: TensorRT $trt_version: $([ $status -eq 0 ] && echo all translation units compile || echo FAILURES)"
exit $status
