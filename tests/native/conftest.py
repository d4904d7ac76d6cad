"""Fixtures of the native-kernel tests: build the libraries once per session (idempotent)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build_native.sh"
LIB_DIR = REPO / "build" / "native" / "lib"


def _have_toolchain() -> bool:
    return shutil.which("cmake") is not None and (shutil.which("c++") or shutil.which("g++")) is not None


@pytest.fixture(scope="session")
def native_libs() -> Path:
    """Folder holding the built libraries.

    With ``QVGEN_NATIVE_LIB_DIR`` set, that folder is used as is (nothing is built). Otherwise
    ``scripts/build_native.sh`` runs (a no-op when up to date, so a stale library is never
    tested), under a file lock because several test sessions may share the working tree.
    """
    env_dir = os.environ.get("QVGEN_NATIVE_LIB_DIR")
    if env_dir:
        return Path(env_dir.split(os.pathsep)[0])
    if not _have_toolchain():
        pytest.skip("cmake and a C++ compiler are needed to build the native libraries")
    LIB_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(LIB_DIR.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(["bash", str(BUILD_SCRIPT)], check=False, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        pytest.fail(f"scripts/build_native.sh failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return LIB_DIR


@pytest.fixture(scope="session")
def ref_ops(native_libs: Path):
    from qvgen_export.native import _lib, ops

    _lib.reference_library()  # fail here, clearly, if the library does not load
    return ops


@pytest.fixture(scope="session")
def cuda_ops(native_libs: Path):
    import torch

    from qvgen_export.native import _lib, ops

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("the W4A4 kernels need compute capability 8.0 or newer")
    if not _lib.cuda_library_available():
        pytest.skip("CUDA kernel library not built (nvcc was not found at build time)")
    _lib.cuda_library()
    return ops
