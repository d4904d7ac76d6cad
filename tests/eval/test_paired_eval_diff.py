"""benchmarks/paired_eval_diff.py pairs videos by (prompt, seed), not by position."""

from __future__ import annotations

import json
from pathlib import Path


def _report(rows: list[tuple[str, int, float]]) -> dict:
    from qvgen_eval.metrics import SCORE_KEYS

    vids = [{"prompt": p, "seed": s, **{k: v for k in SCORE_KEYS}} for p, s, v in rows]
    return {"reference": "float", "models": {"float": {"per_video": vids}}}


def test_pairs_by_prompt_and_seed(tmp_path: Path, capsys, repo_script) -> None:
    mod = repo_script("benchmarks/paired_eval_diff.py")
    a = _report([("x", 0, 10.0), ("y", 0, 50.0), ("x", 1, 30.0)])
    b = _report([("x", 1, 31.0), ("x", 0, 11.0), ("y", 0, 51.0)])  # same videos, other order, +1 each
    ra, rb = mod.paired_rows(a, b, None)
    assert [(r["prompt"], r["seed"]) for r in ra] == [(r["prompt"], r["seed"]) for r in rb]
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert mod.main([str(pa), str(pb)]) == 0
    out = capsys.readouterr().out
    assert "prompt_adherence           +1.0 [+1.0, +1.0]  (resolved)" in out
    pb.write_text(json.dumps(_report([("z", 5, 1.0)])))
    assert mod.main([str(pa), str(pb)]) == 2


def test_two_models_of_one_report(tmp_path: Path, capsys, repo_script) -> None:
    mod = repo_script("benchmarks/paired_eval_diff.py")
    r = _report([("x", 0, 10.0), ("y", 0, 50.0)])
    r["models"]["w4a4"] = {"per_video": [{**v, "prompt_adherence": v["prompt_adherence"] - 3.0} for v in
                                         reversed(r["models"]["float"]["per_video"])]}  # fmt: skip
    p = tmp_path / "r.json"
    p.write_text(json.dumps(r))
    assert mod.main([str(p), str(p), "--model-b", "w4a4"]) == 0
    assert "prompt_adherence           -3.0 [-3.0, -3.0]  (resolved)" in capsys.readouterr().out
    assert mod.main([str(p), str(p), "--model-b", "w9a9"]) == 2
