"""benchmarks/bench_qat.py --videos over finished runs: PSNR/SSIM filled in from each run's saved
checkpoint (a known-worse student scores worse), rows that have them kept, and the paired PSNR
difference to the best baseline in the table."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from qvgen_eval.harness import EvalSettings
from qvgen_export.checkpoint import save_checkpoint
from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan
from qvgen_export.quant.config import QuantConfig
from qvgen_export.quant.ptq import ptq_quantize
from qvgen_tinyworld.text_encoder import TextEncoderConfig, TinyTextEncoder

SHAPE = (3, 8, 32, 32)


def _row(seed: int, method: str, guided: float) -> dict:
    return {"seed": seed, "method": method, "scheme": "w4a4", "forced": {"guided": guided, "cond": 0.1, "uncond": 0.1}}


def test_videos_fill_in_finished_runs(tmp_path: Path, repo_script) -> None:
    bench = repo_script("benchmarks/bench_qat.py")
    torch.set_num_threads(1)
    teacher = build_wan(TINY_WAN_CONFIG, seed=0).eval()
    te = TinyTextEncoder(TextEncoderConfig(dim=TINY_WAN_CONFIG["text_dim"]))
    # The "qvgen" run is a W8A8 model, the "qdm" run a W3A3 one: the second must score worse.
    for method, scheme in (("qvgen", "w8a8"), ("qdm", "w3a3")):
        q = ptq_quantize(copy.deepcopy(teacher), QuantConfig.preset(scheme), progress=False)
        save_checkpoint(q, bench.run_dir_of(tmp_path, 0, method) / "model.safetensors")
    kept = {**_row(1, "qvgen", 0.3), "psnr": 99.0, "ssim": 0.5}  # finished with --videos: untouched
    rows = [_row(-1, "ptq", 0.5), _row(0, "qvgen", 0.3), _row(0, "qdm", 0.4), kept]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ptq_calls = []

    def make_ptq():
        ptq_calls.append(1)
        return ptq_quantize(copy.deepcopy(teacher), QuantConfig.preset("w4a4"), progress=False)

    es = EvalSettings(prompts=("a red circle moving left",), seeds=(0,), num_steps=2)
    assert bench.add_videos(tmp_path, teacher, {}, te.encode, SHAPE, es, make_ptq, False) == 3
    got = [json.loads(x) for x in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [(r["seed"], r["method"], r["forced"]) for r in got] == [(r["seed"], r["method"], r["forced"]) for r in rows]
    assert got[3] == kept and ptq_calls == [1]
    w8, w3 = got[1], got[2]
    assert w8["psnr"] > w3["psnr"] + 3 and w8["ssim"] > w3["ssim"]
    # Nothing left to fill: no sampling, no rewrite.
    assert bench.add_videos(tmp_path, teacher, {}, te.encode, SHAPE, es, make_ptq, False) == 0
    # A run whose checkpoint is gone is named, and the file is left as it was.
    before = (tmp_path / "runs.jsonl").read_text()
    (tmp_path / "runs.jsonl").write_text(before + json.dumps(_row(2, "lsq", 0.45)) + "\n")
    with pytest.raises(FileNotFoundError, match="lsq seed 2"):
        bench.add_videos(tmp_path, teacher, {}, te.encode, SHAPE, es, make_ptq, False)
    assert (tmp_path / "runs.jsonl").read_text().startswith(before)


def test_table_pairs_the_psnr_difference_by_seed(repo_script) -> None:
    bench = repo_script("benchmarks/bench_qat.py")
    rows = []
    for seed, (a, b) in enumerate([(20.0, 19.0), (21.0, 19.5), (22.0, 21.5)]):
        rows.append({**_row(seed, "qvgen", 0.30), "psnr": a, "ssim": 0.8})
        rows.append({**_row(seed, "qdm", 0.35), "psnr": b, "ssim": 0.7})
    table = bench.summarize(rows, ["qvgen", "qdm"])["w4a4"]
    d = table["methods"]["qvgen"]["vs_best_baseline"]["psnr"]
    assert d["n"] == 3 and d["mean"] == pytest.approx(1.0)  # (1 + 1.5 + 0.5) / 3
    assert d["half_width"] == pytest.approx(4.303 * 0.5 / 3**0.5)  # sd of the per-seed differences: paired
    assert table["methods"]["qdm"]["psnr_per_seed"] == [19.0, 19.5, 21.5]
    md = bench.markdown({"w4a4": table})
    assert "PSNR - best baseline" in md and "+1.00 +- " in md
