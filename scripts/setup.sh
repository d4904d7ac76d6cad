#!/usr/bin/env bash
# Install qvgen-export for CPU use on a fresh machine (Python >= 3.10 with pip).
# torch is pinned: an unpinned torch pulls the newest CUDA build with several GB of CUDA wheels.
# GPU users install a CUDA torch themselves, then: pip install -e ".[gpu]" (or ".[trt]").
# QVGEN_WITH_CUTLASS=1 also installs nvidia-cutlass (headers of the CUTLASS sm_90a wgmma path).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$py" -m pip install --quiet "torch==2.13.0"
"$py" -m pip install --quiet -e "$repo[cpu,dev]"
# Optional: CUTLASS headers for the Hopper wgmma GEMM path (then QVGEN_WITH_CUTLASS=ON
# bash scripts/build_native.sh compiles the sm_90a objects, ~3 extra minutes on 2 cores, which is
# why the default CPU/CI install and build leave it out).
if [ "${QVGEN_WITH_CUTLASS:-0}" = "1" ]; then
  "$py" -m pip install --quiet nvidia-cutlass
fi
echo "setup.sh: qvgen-export installed ($("$py" -c 'import qvgen_export; print(qvgen_export.__version__)'))"
