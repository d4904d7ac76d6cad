"""ctest of the TensorRT plugin's TensorRT-free core (plugins/trt/w4a4_linear/plugin_core_test.cpp).

Runs the test registered in the CMake build that scripts/build_native.sh makes (build/native):
field parsing and validation, the shape rule, workspace arithmetic, the serialized state (round
trip and corrupted buffers), the type/format rule, and that the header CMake generated from
qvgen_export/targets/trt_plugin.json matches that JSON. Needs no TensorRT and no GPU.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build" / "native"
TEST_BIN = BUILD / "bin" / "qvgen_trt_plugin_core_test"
HEADER = BUILD / "plugins" / "trt" / "generated" / "qvgen" / "trt_plugin_contract.h"
CONTRACT = REPO / "qvgen_export" / "targets" / "trt_plugin.json"


def _require_build() -> None:
    if shutil.which("ctest") is None:
        pytest.skip("ctest not installed")
    if not (BUILD / "CMakeCache.txt").is_file():
        pytest.skip("build/native does not exist: run scripts/build_native.sh")
    if not TEST_BIN.is_file():
        pytest.skip(f"{TEST_BIN.relative_to(REPO)} was not built: run scripts/build_native.sh")


def test_plugin_core_ctest() -> None:
    _require_build()
    proc = subprocess.run(
        ["ctest", "--test-dir", str(BUILD), "-R", "^qvgen_trt_plugin_core$", "--output-on-failure"],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "1 tests passed" in proc.stdout or "100% tests passed" in proc.stdout, proc.stdout


def test_generated_header_matches_contract() -> None:
    """A second, Python-side look at the generated constants (the ctest checks them too)."""
    _require_build()
    if not HEADER.is_file():
        pytest.skip("generated contract header missing")
    text = HEADER.read_text()
    spec = json.loads(CONTRACT.read_text())

    def const(name: str) -> str:
        m = re.search(rf"\b{name}\[?\]? = \"?([^\";]*)\"?;", text)
        assert m, f"{name} missing from {HEADER}"
        return m.group(1)

    assert const("kOpType") == spec["op_type"]
    assert const("kVersion") == spec["version"]
    assert const("kNamespace") == spec["namespace"]
    assert int(const("kNbInputs")) == len(spec["inputs"])
    assert int(const("kNbFields")) == len(spec["fields"])
    for i, inp in enumerate(spec["inputs"]):
        assert int(const(f"kInput_{inp['name']}")) == i
    for i, field in enumerate(spec["fields"]):
        assert int(const(f"kField_{field['name']}")) == i
        lo = min(field["allowed"]) if "allowed" in field else field["min"]
        hi = max(field["allowed"]) if "allowed" in field else field["max"]
        assert re.search(rf'\{{"{field["name"]}", {lo}, {hi}, ', text), field["name"]
