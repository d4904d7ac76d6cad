#!/usr/bin/env bash
# The main job on a fresh machine: install, then quantize -> export -> sample -> parity on the
# embedded tiny model. Outputs land in artifacts/demo/. Extra arguments go to qvgen-demo.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup.sh
qvgen-demo "$@"
