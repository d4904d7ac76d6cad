"""The wheel as a user gets it: its file list, and every console script's --help run from it.

The wheel is built from a copy of the sources (``pip wheel --no-deps --no-build-isolation``, so no
network), unpacked, and each console script runs with only the unpacked wheel on ``PYTHONPATH``
from an unrelated folder: nothing can come from the checkout.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "qvgen_export", "qvgen_tinyworld", "qvgen_eval", "trainer")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
        else:
            shutil.copy2(p, src / name)
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = out.glob("qvgen_export-*.whl")
    return whl


@pytest.fixture(scope="module")
def unpacked(wheel, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(d)
    return d


def test_wheel_file_list(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"qvgen_export", "qvgen_tinyworld", "qvgen_eval", "qvgen_trainer"}, (
        tops
    )  # no top-level `trainer` (a PyPI name)
    # every source module is packaged (a new subpackage cannot be silently left out)
    for root, prefix in (
        ("qvgen_export", "qvgen_export"),
        ("qvgen_tinyworld", "qvgen_tinyworld"),
        ("qvgen_eval", "qvgen_eval"),
        ("trainer", "qvgen_trainer"),
    ):
        for f in (REPO / root).rglob("*.py"):
            assert f"{prefix}/{f.relative_to(REPO / root).as_posix()}" in names, f
    assert "qvgen_export/targets/trt_plugin.json" in names
    for asset in (REPO / "qvgen_tinyworld" / "assets").glob("*"):
        if asset.suffix in (".safetensors", ".json"):
            assert f"qvgen_tinyworld/assets/{asset.name}" in names


def _scripts(unpacked: Path) -> dict[str, str]:
    (ep,) = unpacked.glob("*.dist-info/entry_points.txt")
    cp = configparser.ConfigParser()
    cp.read(ep)
    return dict(cp["console_scripts"])


def _run_script(unpacked: Path, target: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    module, func = target.split(":")
    code = (
        f"import sys; sys.argv = ['x', *{args!r}]; import {module} as m; "
        f"assert m.__file__.startswith({str(unpacked)!r}), m.__file__; sys.exit(m.{func}())"
    )
    env = {**os.environ, "PYTHONPATH": str(unpacked), "QVGEN_NATIVE_LIB_DIR": ""}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, check=False)


def test_console_scripts_run_from_the_wheel(unpacked, tmp_path):
    scripts = _scripts(unpacked)
    assert set(scripts) >= {
        "qvgen-export",
        "qvgen-build-engine",
        "qvgen-quantize",
        "qvgen-run",
        "qvgen-demo",
        "qvgen-eval",
        "qvgen-train",
    }
    assert scripts["qvgen-train"].startswith("qvgen_trainer.")
    for name, target in scripts.items():
        proc = _run_script(unpacked, target, ["--help"], tmp_path)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
        assert "usage:" in proc.stdout and "(default: None)" not in proc.stdout, name
        assert "example" in proc.stdout.lower(), f"{name} --help shows no example"


def test_int4_without_the_native_library_is_one_line(unpacked, tmp_path):
    proc = _run_script(unpacked, _scripts(unpacked)["qvgen-run"], ["--ckpt", "x.safetensors", "--int4"], tmp_path)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err, err
    assert "libqvgen_w4a4_ref.so" in err and "scripts/build_native.sh" in err and "source checkout" in err
