#!/usr/bin/env bash
# Configure and build the native libraries (Release) into build/native. Idempotent: a second run
# only rebuilds what changed. CUDA kernels are built when nvcc is found (see CMakeLists.txt);
# otherwise only the CPU reference.
#
# Environment:
#   QVGEN_BUILD_DIR          build folder (default: <repo>/build/native)
#   QVGEN_CUDA_ARCHITECTURES e.g. "90" to build for one architecture only (default "80;86;89;90")
#   QVGEN_BUILD_CUDA         ON/OFF (default ON)
#   QVGEN_WITH_CUTLASS       ON/OFF (default OFF): also build the CUTLASS sm_90a wgmma path (needs
#                            `pip install nvidia-cutlass` or QVGEN_CUTLASS_DIR; ~3 more minutes on 2 cores)
#   QVGEN_CUTLASS_DIR        CUTLASS include folder (default: the nvidia-cutlass pip package)
#   QVGEN_BUILD_JOBS         parallel jobs (default: number of CPUs)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${QVGEN_BUILD_DIR:-$repo/build/native}"
jobs="${QVGEN_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"

for tool in cmake c++; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "build_native.sh: '$tool' not found; install CMake >= 3.24 and a C++17 compiler" >&2
    exit 2
  fi
done

args=(-S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release)
if command -v ninja >/dev/null 2>&1 && [ ! -f "$build/CMakeCache.txt" ]; then
  args+=(-G Ninja)
fi
if [ -n "${QVGEN_CUDA_ARCHITECTURES:-}" ]; then
  args+=("-DQVGEN_CUDA_ARCHITECTURES=${QVGEN_CUDA_ARCHITECTURES}")
fi
if [ -n "${QVGEN_BUILD_CUDA:-}" ]; then
  args+=("-DQVGEN_BUILD_CUDA=${QVGEN_BUILD_CUDA}")
fi

# Always passed, so that an existing build folder follows the environment (default OFF).
args+=("-DQVGEN_WITH_CUTLASS=${QVGEN_WITH_CUTLASS:-OFF}")
if [ -n "${QVGEN_CUTLASS_DIR:-}" ]; then
  args+=("-DQVGEN_CUTLASS_DIR=${QVGEN_CUTLASS_DIR}")
fi

cmake "${args[@]}"
cmake --build "$build" --parallel "$jobs"
echo "build_native.sh: libraries in $build/lib"
ls -1 "$build/lib"
