"""The CMake build: configure messages, CUDA architectures, C ABI of the built libraries (CI).

No GPU needed: compiling for sm_80/86/89/90 works with nvcc alone, and the CUDA library must
load and report errors (not abort) on a machine without a driver.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")


def _configure(tmp_path: Path, *defs: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["cmake", "-S", str(REPO), "-B", str(tmp_path / "b"), *defs],
        check=False,
        capture_output=True,
        text=True,
    )


@needs_cmake
def test_configure_without_cuda_says_what_is_skipped(tmp_path: Path) -> None:
    proc = _configure(tmp_path, "-DQVGEN_BUILD_CUDA=OFF")
    assert proc.returncode == 0, proc.stderr
    assert "qvgen: CPU reference library (qvgen_w4a4_ref): enabled" in proc.stdout
    assert "qvgen: CUDA kernels SKIPPED: QVGEN_BUILD_CUDA=OFF" in proc.stdout


@needs_cmake
@needs_nvcc
def test_configure_rejects_pre_ampere_architectures(tmp_path: Path) -> None:
    proc = _configure(tmp_path, "-DQVGEN_CUDA_ARCHITECTURES=75;90")
    assert proc.returncode != 0
    assert "need sm_80" in proc.stderr


def _built_archs(build_dir: Path) -> list[str]:
    cache = (build_dir / "CMakeCache.txt").read_text()
    m = re.search(r"^QVGEN_CUDA_ARCHITECTURES:STRING=(.*)$", cache, re.MULTILINE)
    assert m, "QVGEN_CUDA_ARCHITECTURES missing from CMakeCache.txt"
    return [re.match(r"\d+", a).group(0) for a in m.group(1).split(";") if a]


@needs_nvcc
def test_cuda_library_compiled_for_every_architecture(native_libs: Path) -> None:
    lib = native_libs / "libqvgen_w4a4_cuda.so"
    assert lib.is_file(), "nvcc is on PATH, so build_native.sh must have built the CUDA library"
    data = lib.read_bytes()
    archs = _built_archs(native_libs.parent)
    if native_libs.parent == REPO / "build" / "native" and not _env_archs():
        assert archs == ["80", "86", "89", "90"]
    for a in archs:
        # nvcc embeds each SASS image's ptxas command line; one per architecture.
        assert f"-arch sm_{a} ".encode() in data, f"no sm_{a} code in {lib}"


def _env_archs() -> str:
    import os

    return os.environ.get("QVGEN_CUDA_ARCHITECTURES", "")


@needs_nvcc
def test_cuda_library_reports_errors_without_a_gpu(native_libs: Path) -> None:
    """Bad arguments and a missing device come back as statuses and messages, never aborts."""
    import torch

    from qvgen_export.native import _lib

    lib = _lib.cuda_library()
    assert lib.qvgen_cuda_abi_version() == _lib.ABI_VERSION
    # ldqx not a multiple of 16 -> INVALID_ARGUMENT before anything touches the device.
    st = lib.qvgen_cuda_gemm(16, 20, 16, 16, 16, 16, 16, 16, 16, 16, None, 4, 4, 4, 16, 0, 4, 0, None)
    assert st == 1 and b"ldqx" in lib.qvgen_cuda_last_error()
    assert lib.qvgen_cuda_act_quant(16, 0, 4, 4, 4, 16, 16, 4, 5, 16, 16, 16, 16, 16, None) == 2  # 5 bits
    if not torch.cuda.is_available():
        resolved = ctypes.c_int(0)
        assert lib.qvgen_cuda_resolve_path(0, resolved) == 3  # CUDA error: no driver / device
        assert lib.qvgen_cuda_last_error()


def test_reference_library_exports_only_the_c_api(native_libs: Path) -> None:
    if shutil.which("nm") is None:
        pytest.skip("nm not installed")
    for name, prefix in (("libqvgen_w4a4_ref.so", "qvgen_ref_"), ("libqvgen_w4a4_cuda.so", "qvgen_cuda_")):
        lib = native_libs / name
        if not lib.is_file():
            continue
        out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], check=True, capture_output=True, text=True)
        syms = [line.split()[-1] for line in out.stdout.splitlines() if line.split()[1:2] == ["T"]]
        ours = [s for s in syms if s.startswith("qvgen")]
        assert ours and all(s.startswith(prefix) for s in ours), ours


@needs_nvcc
def test_tensor_core_kernel_under_host_emulation(native_libs: Path) -> None:
    """The CUDA kernels' own source, run on CPU threads with a PTX-fragment model, is exact.

    The activation quantizer matches the CPU reference byte for byte; the code sums and all three
    GEMM paths (I32, F32 and BF16 outputs) match plain loops. Checks index arithmetic, K-tail masking,
    nibble unpacking, reductions and barrier placement; the hardware fragment layout itself is
    checked on a GPU by qvgen_cuda_selftest.
    """
    emu = native_libs.parent / "bin" / "qvgen_kernels_emu"
    assert emu.is_file(), "build_native.sh builds the emulator whenever the CUDA kernels are configured"
    proc = subprocess.run([str(emu)], check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS: 0 mismatching outputs" in proc.stdout
