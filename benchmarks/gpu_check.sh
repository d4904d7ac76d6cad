#!/usr/bin/env bash
# One-call GPU check of the native W4A4 kernels on a bare H100/H200 (or any sm_80+) machine:
#   1. build the native libraries for THIS GPU only (build/gpu_check; the CUTLASS sm_90a wgmma
#      path too on sm_90 when CUTLASS headers are present),
#   2. the on-device self-test of every GEMM path (vs host-computed expected outputs),
#   3. the GPU tests: pytest -m gpu tests/native (bit-exact vs the CPU reference),
#   3b. a raw mma.sync u8/u4 rate probe (benchmarks/mma_probe.cu),
#   4. bench_gemm.py at Wan 2.1 1.3B and 14B linear shapes (M = 32760) vs torch.matmul bf16
#      (cuBLAS) and torch._int_mm (INT8), no end-to-end forward,
# and prints ONE JSON line on stdout (logs go to build/gpu_check/logs/). Budget: < 8 minutes.
#
# Needs (no network is used): nvidia driver + GPU, nvcc (CUDA >= 12.3 for the wgmma path), cmake,
# a C++17 compiler, python3 with a CUDA build of torch, numpy and pytest, this repository
# importable (pip install -e . or PYTHONPATH=<repo>), and for the Hopper path the CUTLASS 3.x+
# headers: `pip install nvidia-cutlass` (offline: the wheel carried over) or
# QVGEN_CUTLASS_DIR=<cutlass>/include. Without CUTLASS on sm_90 the script stops with a message
# unless QVGEN_GPU_CHECK_ALLOW_NO_CUTLASS=1.
#
# Exit status: 0 all passed; 1 a check failed (the JSON says which); 2 something is missing
# (one line on stderr says what, before any work is done).
# Environment: QVGEN_GPU_CHECK_ITERS (default 10), QVGEN_GPU_CHECK_MODELS (default
# "wan2.1-1.3b wan2.1-14b"), QVGEN_GPU_CHECK_SKIP_TESTS=1 (bench only).
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$repo/build/gpu_check"
logs="$build/logs"
py="${PYTHON:-python3}"
t_start=$(date +%s)

die() {  # missing prerequisite: one clear line, status 2
  echo "gpu_check.sh: $*" >&2
  exit 2
}

# ---- prerequisites (fail fast) -------------------------------------------------------------------
command -v "$py" >/dev/null 2>&1 || die "python3 not found (set PYTHON=...)"
command -v cmake >/dev/null 2>&1 || die "cmake not found (CMake >= 3.24 is needed to build the kernels)"
command -v nvcc >/dev/null 2>&1 || die "nvcc not found on PATH (install the CUDA toolkit or add its bin/ to PATH)"
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || die "no C++ compiler (c++/g++) found"
probe=$("$py" - <<'EOF' 2>&1
import sys
try:
    import torch
except Exception as e:  # noqa: BLE001
    print(f"ERR torch cannot be imported: {e}"); sys.exit(0)
try:
    import numpy, pytest  # noqa: F401
except Exception as e:  # noqa: BLE001
    print(f"ERR numpy/pytest missing: {e}"); sys.exit(0)
if torch.version.cuda is None:
    print(f"ERR torch {torch.__version__} is a CPU build (a CUDA build of torch is needed)"); sys.exit(0)
if not torch.cuda.is_available():
    print("ERR no CUDA GPU visible to torch (torch.cuda.is_available() is False; check the driver / nvidia-smi)")
    sys.exit(0)
cc = torch.cuda.get_device_capability(0)
if cc < (8, 0):
    print(f"ERR compute capability {cc[0]}.{cc[1]} < 8.0: the W4A4 kernels need sm_80 or newer"); sys.exit(0)
print(f"OK {cc[0]}{cc[1]} {torch.cuda.get_device_name(0)}")
EOF
)
case "$probe" in
  OK*) ;;
  *) die "${probe#ERR }" ;;
esac
read -r _ arch gpu_name <<<"$probe"
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH
"$py" -c "import qvgen_export" 2>/dev/null || die "the qvgen_export package cannot be imported from $repo"

cutlass_note="not needed (not sm_90)"
cmake_extra=()
if [ "$arch" = "90" ]; then
  cdir="${QVGEN_CUTLASS_DIR:-}"
  if [ -z "$cdir" ]; then
    cdir=$("$py" -c "import os, cutlass_library as c; print(os.path.join(os.path.dirname(c.__file__), 'source', 'include'))" 2>/dev/null || true)
  fi
  if [ -n "$cdir" ] && [ -f "$cdir/cutlass/cutlass.h" ]; then
    cutlass_note="$cdir"
    cmake_extra+=("-DQVGEN_WITH_CUTLASS=ON" "-DQVGEN_CUTLASS_DIR=$cdir")
  elif [ "${QVGEN_GPU_CHECK_ALLOW_NO_CUTLASS:-0}" = "1" ]; then
    cutlass_note="missing (allowed): the wgmma path is not built"
  else
    die "sm_90 GPU but no CUTLASS headers: pip install nvidia-cutlass (offline: install the carried wheel) or set QVGEN_CUTLASS_DIR=<cutlass>/include; QVGEN_GPU_CHECK_ALLOW_NO_CUTLASS=1 runs without the wgmma path"
  fi
fi
mkdir -p "$logs"
echo "gpu_check.sh: $gpu_name (sm_$arch), CUTLASS: $cutlass_note; logs in $logs" >&2

# ---- 1. build for this GPU -----------------------------------------------------------------------
t0=$(date +%s)
build_ok=true
jobs="${QVGEN_BUILD_JOBS:-$(nproc 2>/dev/null || echo 4)}"
gen=()
if command -v ninja >/dev/null 2>&1 && [ ! -f "$build/CMakeCache.txt" ]; then gen=(-G Ninja); fi
if ! timeout 300 cmake -S "$repo" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
  "-DQVGEN_CUDA_ARCHITECTURES=$arch" "${cmake_extra[@]}" >"$logs/configure.log" 2>&1 ||
  ! timeout 300 cmake --build "$build" --parallel "$jobs" >"$logs/build.log" 2>&1; then
  build_ok=false
fi
build_s=$(($(date +%s) - t0))
if ! $build_ok; then
  echo "gpu_check.sh: build failed, see $logs/configure.log and $logs/build.log" >&2
  "$py" -c "import json,sys; print(json.dumps({'ok': False, 'failed': 'build', 'gpu': sys.argv[1], 'build_s': int(sys.argv[2])}))" \
    "$gpu_name" "$build_s"
  exit 1
fi
export QVGEN_NATIVE_LIB_DIR="$build/lib"

# ---- 2. self-tests -------------------------------------------------------------------------------
t0=$(date +%s)
timeout 120 "$py" - >"$logs/selftest.json" 2>"$logs/selftest.log" <<'EOF'
import ctypes, json
import torch
from qvgen_export.native import _lib
lib = _lib.cuda_library()
s = torch.cuda.current_stream().cuda_stream
out = {"has_wgmma": bool(lib.qvgen_cuda_has_wgmma())}
resolved = ctypes.c_int(0)
lib.qvgen_cuda_resolve_path(0, resolved)
out["auto_path"] = _lib.PATH_NAMES.get(resolved.value, resolved.value)
for code, name in _lib.PATH_NAMES.items():
    bad = ctypes.c_int64(-1)
    st = lib.qvgen_cuda_selftest(code, s, bad)
    out[name] = bad.value if st == 0 else f"status {st}: {lib.qvgen_cuda_last_error().decode()}"
print(json.dumps(out))
EOF
selftest_rc=$?
selftest_s=$(($(date +%s) - t0))

# ---- 2b. raw mma.sync rate probe (u8 m16n8k32, u4 m16n8k64) ----------------------------------------
t0=$(date +%s)
probe_json="null"
if timeout 120 nvcc -O3 "-arch=sm_$arch" "$repo/benchmarks/mma_probe.cu" -o "$build/mma_probe" \
  >"$logs/mma_probe_build.log" 2>&1; then
  probe_json=$(timeout 60 "$build/mma_probe" 2>>"$logs/mma_probe.log") || probe_json="null"
fi
[ -n "$probe_json" ] || probe_json="null"
printf '%s\n' "$probe_json" >"$logs/mma_probe.json"
probe_s=$(($(date +%s) - t0))

# ---- 3. GPU tests --------------------------------------------------------------------------------
t0=$(date +%s)
tests_rc=0
if [ "${QVGEN_GPU_CHECK_SKIP_TESTS:-0}" != "1" ]; then
  (cd "$repo" && timeout 240 "$py" -m pytest -q -p no:cacheprovider -m gpu tests/native -x \
    >"$logs/pytest_gpu.log" 2>&1)
  tests_rc=$?
fi
tests_s=$(($(date +%s) - t0))

# ---- 4. benchmark --------------------------------------------------------------------------------
t0=$(date +%s)
read -r -a models <<<"${QVGEN_GPU_CHECK_MODELS:-wan2.1-1.3b wan2.1-14b}"
timeout 240 "$py" "$repo/benchmarks/bench_gemm.py" --no-e2e --compact --warmup 2 \
  --iters "${QVGEN_GPU_CHECK_ITERS:-10}" --models "${models[@]}" --out "$logs/bench_gemm.json" \
  >"$logs/bench_stdout.json" 2>"$logs/bench.log"
bench_rc=$?
bench_s=$(($(date +%s) - t0))

# ---- one JSON line -------------------------------------------------------------------------------
"$py" - "$logs" "$gpu_name" "$arch" "$cutlass_note" "$build_s" "$selftest_rc" "$selftest_s" "$tests_rc" \
  "$tests_s" "$bench_rc" "$bench_s" "$(($(date +%s) - t_start))" "$probe_s" <<'EOF'
import json, re, sys
from pathlib import Path
logs = Path(sys.argv[1])
gpu, arch, cutlass = sys.argv[2], sys.argv[3], sys.argv[4]
build_s, st_rc, st_s, t_rc, t_s, b_rc, b_s, total, probe_s = map(int, sys.argv[5:14])
def read_json(p):
    try:
        return json.loads(p.read_text())
    except Exception:  # noqa: BLE001
        return None
selftest = read_json(logs / "selftest.json")
tail = (logs / "pytest_gpu.log").read_text().strip().splitlines()[-1:] if (logs / "pytest_gpu.log").exists() else []
bench = read_json(logs / "bench_gemm.json")
rows = {}
if bench:
    for model, shapes in bench.get("shapes", {}).items():
        for r in shapes:
            key = f"{model}:{r['K']}x{r['N']}"
            rows[key] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                         if k.endswith(("_ms", "_tops", "_tflops", "_path", "_bits", "_packed")) or k.startswith(("speedup", "check_"))}
selftest_ok = st_rc == 0 and selftest is not None and all(
    v == 0 for k, v in selftest.items() if k not in ("has_wgmma", "auto_path") and not (isinstance(v, str) and "status 2" in v))
ok = selftest_ok and t_rc == 0 and b_rc == 0
out = {
    "ok": ok, "gpu": gpu, "sm": arch, "cutlass": cutlass, "seconds": total,
    "build_s": build_s, "selftest": selftest, "selftest_s": st_s,
    "pytest_gpu": {"rc": t_rc, "summary": tail[0] if tail else None, "s": t_s},
    "bench": {"rc": b_rc, "s": b_s, "shapes": rows, "torch": (bench or {}).get("torch")},
    "mma_sync_probe": read_json(logs / "mma_probe.json"), "mma_sync_probe_s": probe_s,
    "wgmma_rate": "gemm_u8_tops in bench (the CUTLASS wgmma kernel at M=32760)",
}
print(json.dumps(out, separators=(",", ":")))
sys.exit(0 if ok else 1)
EOF
