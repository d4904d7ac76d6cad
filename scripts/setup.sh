#!/usr/bin/env bash
# Install qvgen-export for CPU use on a fresh machine (Python >= 3.10 with pip).
# torch is pinned: an unpinned torch pulls the newest CUDA build with several GB of CUDA wheels.
# GPU users install a CUDA torch themselves, then: pip install -e ".[gpu]" (or ".[trt]").
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$py" -m pip install --quiet "torch==2.13.0"
"$py" -m pip install --quiet -e "$repo[cpu,dev]"
echo "setup.sh: qvgen-export installed ($("$py" -c 'import qvgen_export; print(qvgen_export.__version__)'))"
