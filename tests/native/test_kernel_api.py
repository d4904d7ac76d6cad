"""C API of the W4A4 kernels, version 2 (CI, no GPU): header <-> Python copies, the K bound, the
CUTLASS wgmma path's configure line and machine code.

- ABI version, QVGEN_MAX_K and the enums in qvgen/w4a4_types.h equal the copies in
  ``qvgen_export/native/_lib.py``.
- K <= 74,565 (|I| <= 225 K must be exact in float32): both libraries accept it and return
  UNSUPPORTED above it, before touching memory or a device.
- Where the build has the CUTLASS path (nvidia-cutlass installed), the library's sm_90a code holds
  IGMMA (wgmma INT8) instructions; where CUTLASS is missing, configure says so and builds the rest.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TYPES_H = REPO / "plugins" / "kernels" / "include" / "qvgen" / "w4a4_types.h"
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")


def _header_defines() -> dict[str, int]:
    text = TYPES_H.read_text()
    out = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define (QVGEN_\w+) (\d+)", text)}
    out.update({m.group(1): int(m.group(2)) for m in re.finditer(r"(QVGEN_\w+) = (\d+)", text)})
    return out


def test_python_copies_match_the_header() -> None:
    from qvgen_export.native import _lib

    d = _header_defines()
    assert d["QVGEN_W4A4_ABI_VERSION"] == _lib.ABI_VERSION == 2
    assert d["QVGEN_MAX_K"] == _lib.MAX_K
    for code, name in _lib.PATH_NAMES.items():
        assert d[f"QVGEN_PATH_{name.upper()}"] == code
    assert {v for k, v in d.items() if k.startswith("QVGEN_PATH_")} == set(_lib.PATH_NAMES)
    for name in ("F32", "F16", "BF16", "I32"):
        assert d[f"QVGEN_DTYPE_{name}"] == getattr(_lib, f"DTYPE_{name}")


def test_max_k_is_the_float32_exactness_bound() -> None:
    """|I| <= 225 K (4-bit codes) converts to float32 exactly iff 225 K <= 2^24."""
    from qvgen_export.native import _lib

    k = _lib.MAX_K
    assert 225 * k <= 2**24 < 225 * (k + 1)
    assert k == math.floor(2**24 / 225)
    # And the first integer float32 cannot hold lies just above 2^24.
    import numpy as np

    assert int(np.float32(2**24 + 1)) != 2**24 + 1


def test_reference_guards_k(native_libs: Path) -> None:
    from qvgen_export.native import _lib

    lib = _lib.reference_library()
    for k, want in ((_lib.MAX_K, 0), (_lib.MAX_K + 1, 2)):
        ld = (k + 1) // 2
        # M = N = 0: nothing is read; only the argument checks run.
        assert (
            lib.qvgen_ref_gemm(None, ld, None, None, None, None, ld, None, None, None, None, 0, 0, k, None, 0, 0)
            == want
        )
        assert lib.qvgen_ref_act_quant(None, 0, 0, k, k, None, None, 1, 4, None, ld, None, None, None) == want
        assert lib.qvgen_ref_code_sums(None, ld, 0, k, None) == want
    assert b"QVGEN_MAX_K" in lib.qvgen_ref_last_error()


@needs_nvcc
def test_cuda_library_guards_k_without_a_device(native_libs: Path) -> None:
    from qvgen_export.native import _lib

    lib = _lib.cuda_library()
    k = _lib.MAX_K + 1
    ld = ((k + 1) // 2 + 15) // 16 * 16
    st = lib.qvgen_cuda_gemm(16, ld, 16, 16, 16, 16, ld, 16, 16, 16, None, 4, 4, k, 16, 0, 4, 0, None)
    assert st == 2 and b"QVGEN_MAX_K" in lib.qvgen_cuda_last_error()
    assert lib.qvgen_cuda_act_quant(16, 0, 4, k, k, 16, 16, 4, 4, 16, ld, 16, 16, 16, None) == 2
    assert lib.qvgen_cuda_act_quant_u8(16, 0, 4, k, k, 16, 16, 4, 4, 16, k + 15, 16, 16, 16, None) == 2
    ld8 = (k + 15) // 16 * 16
    assert lib.qvgen_cuda_gemm_u8(16, ld8, 16, 16, 16, 16, ld8, 16, 16, 16, None, 4, 4, k, 16, 0, 4, None) == 2
    assert lib.qvgen_cuda_unpack_u8(16, ld, 4, k, 16, ld8, None) == 2
    # Byte-container argument checks, before any device access.
    assert lib.qvgen_cuda_unpack_u8(16, 8, 4, 16, 16, 8, None) == 1  # ld8 not a multiple of 16
    assert lib.qvgen_cuda_act_quant_u8(16, 0, 4, 40, 40, 16, 16, 4, 4, 16, 32, 16, 16, 16, None) == 1  # ldq8 < K
    # Unknown path 5 is rejected; WGMMA_U8 (4) is a known path.
    assert lib.qvgen_cuda_gemm(16, 16, 16, 16, 16, 16, 16, 16, 16, 16, None, 4, 4, 4, 16, 0, 4, 5, None) == 1


def _cmake_cache(build_dir: Path) -> str:
    return (build_dir / "CMakeCache.txt").read_text()


def _cuobjdump() -> tuple[str, dict[str, str]] | None:
    """cuobjdump (+ nvdisasm, which -sass needs) from PATH or the nvidia-cuda-* pip packages."""
    env = dict(os.environ)
    exe = shutil.which("cuobjdump")
    try:
        import nvidia

        for root in nvidia.__path__:
            for b in Path(root).glob("*/bin"):
                if (b / "cuobjdump").is_file() and exe is None:
                    exe = str(b / "cuobjdump")
                if (b / "nvdisasm").is_file():
                    env["PATH"] = f"{b}{os.pathsep}{env.get('PATH', '')}"
    except ImportError:
        pass
    if exe is None or shutil.which("nvdisasm", path=env.get("PATH")) is None:
        return None
    return exe, env


@needs_nvcc
def test_wgmma_path_machine_code(native_libs: Path) -> None:
    """The CUTLASS path, where built, is sm_90a code with INT8 wgmma (IGMMA) in its SASS."""
    from qvgen_export.native import _lib

    lib = _lib.cuda_library()
    if not lib.qvgen_cuda_has_wgmma():
        pytest.skip("the CUTLASS wgmma path is not built here (nvidia-cutlass not installed)")
    so = native_libs / "libqvgen_w4a4_cuda.so"
    assert b"-arch sm_90a " in so.read_bytes(), "no sm_90a code in the library"
    tools = _cuobjdump()
    if tools is None:
        pytest.skip("cuobjdump/nvdisasm not installed (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    exe, env = tools
    sass = subprocess.run(
        [exe, "-sass", "-arch", "sm_90a", str(so)], check=True, capture_output=True, text=True, env=env
    )
    igmma = re.findall(r"IGMMA\.\w+\.U8\.U8", sass.stdout)
    assert len(igmma) >= 4, "expected u8 x u8 IGMMA in each of the 4 epilogue variants"


@needs_nvcc
def test_configure_without_cutlass_says_so(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["cmake", "-S", str(REPO), "-B", str(tmp_path / "b"), "-DQVGEN_CUDA_ARCHITECTURES=90",
         "-DQVGEN_WITH_CUTLASS=ON", f"-DQVGEN_CUTLASS_DIR={tmp_path / 'no-cutlass'}"],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "qvgen: CUTLASS wgmma path (WGMMA_U8): SKIPPED: CUTLASS not found" in proc.stdout
    assert "qvgen: CUDA kernels (qvgen_w4a4_cuda): enabled" in proc.stdout


@needs_nvcc
def test_has_wgmma_matches_the_configure_result(native_libs: Path) -> None:
    from qvgen_export.native import _lib

    b = native_libs.parent
    gen = [p for p in (b / "build.ninja", b / "CMakeFiles" / "Makefile2") if p.is_file()]
    if not gen:
        pytest.skip(f"no build.ninja or Makefile2 in {b}")
    built = any("qvgen_w4a4_wgmma_obj" in p.read_text() for p in gen)
    assert bool(_lib.cuda_library().qvgen_cuda_has_wgmma()) == built
    if not built:
        return
    resolved = ctypes.c_int(0)
    # No GPU here: WGMMA_U8 still needs a device to resolve, and says why it cannot.
    st = _lib.cuda_library().qvgen_cuda_resolve_path(_lib.PATH_WGMMA_U8, resolved)
    assert st in (0, 2, 3)


class _FakeLib:
    """Stands in for the CUDA library: AUTO resolves to ``auto``; ``results`` = per-path (status, mismatches)."""

    def __init__(self, auto: int, results: dict[int, tuple[int, int]]) -> None:
        self.auto, self.results, self.tried = auto, results, []

    def qvgen_cuda_resolve_path(self, path: int, resolved: ctypes.c_int) -> int:
        resolved.value = self.auto if path == 0 else path
        return 0

    def qvgen_cuda_selftest(self, path: int, stream: object, bad: ctypes.c_int64) -> int:
        self.tried.append(path)
        status, mismatches = self.results.get(path, (0, 0))
        bad.value = mismatches
        return status

    def qvgen_cuda_last_error(self) -> bytes:
        return b"CUTLASS initialize: error"


@pytest.mark.parametrize(
    ("results", "chosen", "tried", "warns"),
    [
        ({}, 4, [4], 0),  # wgmma passes: kept
        ({4: (0, 7)}, 2, [4, 2], 1),  # wgmma mismatches -> imma_u8
        ({4: (3, 0)}, 2, [4, 2], 1),  # wgmma errors (status) -> imma_u8, not an exception
        ({4: (0, 1), 2: (0, 1)}, 3, [4, 2, 3], 2),  # both fail -> SIMT
    ],
)
def test_auto_path_falls_back_on_a_failed_selftest(monkeypatch, results, chosen, tried, warns) -> None:
    import contextlib
    import warnings

    import torch

    from qvgen_export.native import _lib, ops

    fake = _FakeLib(auto=_lib.PATH_WGMMA_U8, results=results)
    monkeypatch.setattr(_lib, "cuda_library", lambda: fake)
    monkeypatch.setattr(ops, "_stream", lambda dev: None)
    monkeypatch.setattr(torch.cuda, "device", lambda index: contextlib.nullcontext())
    monkeypatch.setattr(ops, "_cuda_paths", {})
    monkeypatch.delenv("QVGEN_GEMM_PATH", raising=False)
    monkeypatch.delenv("QVGEN_GEMM_SELFTEST", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ops.cuda_gemm_path(torch.device("cuda", 0)) == chosen
    assert fake.tried == tried
    assert len([w for w in caught if "failed its self-test" in str(w.message)]) == warns
