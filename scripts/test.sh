#!/usr/bin/env bash
# The test command on a fresh machine: install, build the native CPU reference (and compile the
# CUDA kernels when nvcc is present), run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh
bash scripts/build_native.sh
python3 -m pytest -q -p no:cacheprovider "$@"
