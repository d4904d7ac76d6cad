"""The comparison harness and ``qvgen-eval`` on a tiny random Wan (2 prompts, few steps)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from qvgen_eval.cli import main
from qvgen_eval.harness import (
    EvalSettings,
    calibration_batches,
    compare_models,
    error_plot_series,
    json_report,
    markdown_table,
)
from qvgen_eval.plot import plot_error_vs_timestep
from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan
from qvgen_tinyworld.dataset import VideoConfig
from qvgen_tinyworld.teacher import save_teacher
from qvgen_tinyworld.text_encoder import TextEncoderConfig, TinyTextEncoder

PROMPTS = ("a red circle moving left", "a blue square moving up")
SHAPE = (3, 8, 32, 32)


class RoundedOutput(torch.nn.Module):
    """A stand-in for a quantized model: the float model with its output rounded to a grid."""

    def __init__(self, model: torch.nn.Module, step: float) -> None:
        super().__init__()
        self.model, self.step = model, step

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        return_dict: bool = False,
        **kw: Any,
    ) -> tuple[torch.Tensor]:
        out = self.model(hidden_states, timestep, encoder_hidden_states, return_dict=False)[0]
        return (torch.round(out / self.step) * self.step,)


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, TinyTextEncoder]:
    torch.set_num_threads(1)
    return build_wan(TINY_WAN_CONFIG, seed=0), TinyTextEncoder(TextEncoderConfig(dim=TINY_WAN_CONFIG["text_dim"]))


def test_compare_models_report(tiny: tuple[torch.nn.Module, TinyTextEncoder], tmp_path: Path) -> None:
    model, te = tiny
    settings = EvalSettings(prompts=PROMPTS, seeds=(0, 1), num_steps=3)
    models = {"float": model, "same": copy.deepcopy(model), "coarse": RoundedOutput(model, 0.25)}
    report = compare_models(models, te.encode, SHAPE, settings, progress=False)
    assert set(report["models"]) == {"float", "same", "coarse"}
    assert len(report["timesteps"]) == 3 and len(report["models"]["float"]["per_video"]) == 4
    same, coarse = report["models"]["same"], report["models"]["coarse"]
    # An identical copy: zero error, identical videos.
    assert same["rel_error"]["teacher_forced_mean"] == 0.0 and same["rel_error"]["trajectory_mean"] == 0.0
    assert same["fidelity"]["psnr"] == math.inf and same["fidelity"]["ssim"] == pytest.approx(1.0)
    assert same["metrics"] == report["models"]["float"]["metrics"]
    # A coarser model: positive error; step 0 is the same input both ways.
    assert coarse["rel_error"]["teacher_forced_mean"] > 0.01
    row0 = report["timesteps"][0]
    assert row0["teacher_forced"]["coarse"] == pytest.approx(row0["trajectory"]["coarse"], rel=1e-5)
    assert math.isfinite(coarse["fidelity"]["psnr"])
    for entry in report["models"].values():
        assert all(0.0 <= v <= 100.0 for k, v in entry["metrics"].items() if k != "speed")
        for k, (lo, hi) in entry["intervals"].items():
            assert lo <= entry["metrics"][k] <= hi, k
    json.dumps(json_report(report))  # JSON-able
    md = markdown_table(report)
    assert "| coarse |" in md and "float (ref)" in md and "- coarse: 95% bootstrap intervals" in md
    png = plot_error_vs_timestep({"forced": error_plot_series(report, "teacher_forced")}, tmp_path / "e.png")
    assert png.stat().st_size > 1000


def test_settings_and_reference_validation(tiny: tuple[torch.nn.Module, TinyTextEncoder]) -> None:
    model, te = tiny
    with pytest.raises(ValueError, match="names no object"):
        EvalSettings(prompts=("",))
    with pytest.raises(ValueError, match="reference"):
        compare_models({"q": model}, te.encode, SHAPE, EvalSettings(prompts=PROMPTS, seeds=(0,), num_steps=1))
    batches = calibration_batches(te.encode, EvalSettings(prompts=PROMPTS, num_steps=3), clips_per_step=2)
    assert len(batches) == 3 and batches[0]["hidden_states"].shape == (2, *SHAPE)


def test_cli_ptq_and_checkpoint(tiny: tuple[torch.nn.Module, TinyTextEncoder], tmp_path: Path, capsys: Any) -> None:
    from qvgen_export.checkpoint import save_checkpoint
    from qvgen_export.quant.config import QuantConfig
    from qvgen_export.quant.ptq import ptq_quantize

    model, te = tiny
    teacher = tmp_path / "teacher.safetensors"
    save_teacher(
        teacher, model, te, VideoConfig(), {"scheduler": "unipc", "shift": 3.0, "num_steps": 2, "guidance_scale": 4.0}
    )
    ckpt = tmp_path / "w4a4.safetensors"
    save_checkpoint(ptq_quantize(copy.deepcopy(model), QuantConfig.preset("w4a4"), progress=False), ckpt)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "eval"
    args = ["--teacher", str(teacher), "--prompts-file", str(prompts), "--seeds", "0", "--out", str(out)]
    rc = main([*args, "--ptq", "w8a8", "--checkpoint", f"ckpt={ckpt}", "--no-progress"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["float", "ckpt", "w8a8-ptq"]
    assert report["settings"]["num_steps"] == 2
    assert (out / "report.md").is_file() and (out / "error_vs_timestep.png").is_file()
    assert (out / "samples_w8a8-ptq.png").is_file()
    # W8A8 is closer to float than W4A4.
    m = report["models"]
    assert m["w8a8-ptq"]["rel_error"]["teacher_forced_mean"] < m["ckpt"]["rel_error"]["teacher_forced_mean"]
    capsys.readouterr()
    # Bad input: one line on stderr, exit code 2, no traceback.
    assert main([*args, "--checkpoint", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qvgen-eval: error:") and err.count("\n") == 1
    assert main([*args, "--ptq", "w9a9"]) == 2
    assert main([*args, "--seeds", "x"]) == 2
