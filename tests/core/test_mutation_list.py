"""scripts/mutation_check.py stays applicable: every mutation's text is still in its file, once,
and every test it names exists (the script itself runs outside the suite: ~8 min)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _mutations():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("mutation_check", REPO / "scripts" / "mutation_check.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod.MUTATIONS


def test_every_mutation_still_applies() -> None:
    for m in _mutations():
        assert (REPO / m.file).read_text().count(m.old) == 1, (m.name, m.file)
        assert m.old != m.new, m.name
        for t in m.tests:
            path, _, name = t.partition("::")
            assert f"def {name}(" in (REPO / path).read_text(), (m.name, t)
