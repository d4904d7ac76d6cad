"""Fixtures for every test folder."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_script() -> Callable[[str], ModuleType]:
    """``load("benchmarks/bench_qat.py")``: a script of the repository (not a package module)
    imported by path, once per session, and registered in ``sys.modules`` under its stem
    (dataclasses look their module up there)."""
    loaded: dict[str, ModuleType] = {}

    def load(relpath: str) -> ModuleType:
        if relpath not in loaded:
            path = REPO / relpath
            spec = importlib.util.spec_from_file_location(path.stem, path)
            assert spec is not None and spec.loader is not None, path
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            loaded[relpath] = mod
        return loaded[relpath]

    return load
