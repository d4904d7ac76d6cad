"""scripts/mutation_check.py stays applicable: every mutation's text is still in its file, once,
and every test it names exists (the script itself runs outside the suite: ~8 min)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_mutation_still_applies(repo_script) -> None:
    for m in repo_script("scripts/mutation_check.py").MUTATIONS:
        assert (REPO / m.file).read_text().count(m.old) == 1, (m.name, m.file)
        assert m.old != m.new, m.name
        for t in m.tests:
            path, _, name = t.partition("::")
            assert f"def {name}(" in (REPO / path).read_text(), (m.name, t)
