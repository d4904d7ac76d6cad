#!/usr/bin/env bash
# The test command on a fresh machine: install, build the native CPU reference (and compile the
# CUDA kernels when nvcc is present), run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh
bash scripts/build_native.sh
# Two pytest workers (pytest-xdist), one torch thread each: most of the suite is single-threaded
# Python (torch.export tracing, ONNX building, subprocess CLIs), so this halves the wall time on
# CI's 2 cores (1005 s -> 486 s measured) where torch's own 2 threads gain little on tiny models.
# QVGEN_TEST_WORKERS=0 runs in one process; extra arguments (e.g. -n 4) override.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python3 -m pytest -q -p no:cacheprovider -n "${QVGEN_TEST_WORKERS:-2}" "$@"
