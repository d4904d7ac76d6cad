"""benchmarks/gpu_check.sh (the one-call GPU check) on a machine without what it needs (CI).

It cannot run here (no GPU); what is checked: the script parses, and it fails fast, before any
build, with one clear line on stderr, nothing on stdout and exit status 2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def test_gpu_check_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash") or "/bin/bash"
    return subprocess.run([bash, str(SCRIPT)], check=False, capture_output=True, text=True, env=env, timeout=120)


def test_gpu_check_fails_fast_without_cmake(tmp_path: Path) -> None:
    """PATH holds only the shell basics: the first missing tool is named."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "date"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {**os.environ, "PATH": str(bin_dir), "PYTHON": sys.executable}
    proc = _run(env)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip() == "gpu_check.sh: cmake not found (CMake >= 3.24 is needed to build the kernels)"
    assert not (tmp_path / "build").exists()


def test_gpu_check_fails_fast_without_a_gpu() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the script would run for real")
    if shutil.which("cmake") is None or shutil.which("nvcc") is None:
        pytest.skip("cmake/nvcc missing: the script stops earlier (covered above)")
    proc = _run({**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check.sh: ")
    assert "CPU build" in lines[0] or "no CUDA GPU" in lines[0]
