"""The teacher-forced error (qvgen_eval.forced) on a tiny random Wan: 0 for the teacher itself,
worse for a known-worse student, branch errors kept apart, guided error equal to the harness's."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from qvgen_eval.forced import ForcedSettings, compare_forced, forced_errors, reference_trajectory
from qvgen_eval.harness import EvalSettings, compare_models
from qvgen_export.models.wan import TINY_WAN_CONFIG, build_wan
from qvgen_export.quant.config import QuantConfig
from qvgen_export.quant.modules import QuantizedWan
from qvgen_tinyworld.text_encoder import TextEncoderConfig, TinyTextEncoder

PROMPTS = ("a red circle moving left", "a blue square moving up")
SHAPE = (3, 8, 32, 32)
SETTINGS = ForcedSettings(prompts=PROMPTS, seeds=(0, 1), num_steps=3)


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, TinyTextEncoder]:
    torch.set_num_threads(1)
    model = build_wan(TINY_WAN_CONFIG, seed=0).eval()
    return model, TinyTextEncoder(TextEncoderConfig(dim=TINY_WAN_CONFIG["text_dim"]))


class UncondNoise(torch.nn.Module):
    """Exact on the prompt, perturbed on the empty prompt (identified by identity)."""

    def __init__(self, model: torch.nn.Module, uncond: torch.Tensor) -> None:
        super().__init__()
        self.model, self.uncond = model, uncond

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, return_dict: bool = False, **kw: Any) -> Any:
        out = self.model(x, t, c, return_dict=False)[0]
        return (out * 1.05 if c is self.uncond else out,)


def test_zero_for_teacher_and_ordered_by_precision(tiny) -> None:
    model, te = tiny
    w8 = QuantizedWan.from_float(copy.deepcopy(model), QuantConfig.preset("w8a8"), init=True).eval()
    w3 = QuantizedWan.from_float(copy.deepcopy(model), QuantConfig.preset("w3a3"), init=True).eval()
    rep = compare_forced({"float": copy.deepcopy(model), "w8a8": w8, "w3a3": w3}, model, te.encode, SHAPE, SETTINGS)
    r = rep["models"]
    for b in ("cond", "uncond", "guided"):
        assert r["float"][b] == 0.0
        assert 0.0 < r["w8a8"][b] < r["w3a3"][b]
    assert len(r["w3a3"]["per_step"]) == 3 and set(r["w3a3"]["per_seed"]) == {"0", "1"}
    # a perturbed copy is worse than the teacher and a larger perturbation worse still
    noisy = {}
    for name, sd in (("small", 0.01), ("large", 0.05)):
        m = copy.deepcopy(model)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=g) * sd * p.std().nan_to_num(0))
        noisy[name] = m
    rep = compare_forced(noisy, model, te.encode, SHAPE, SETTINGS)
    assert 0 < rep["models"]["small"]["guided"] < rep["models"]["large"]["guided"]


def test_branches_are_measured_separately(tiny) -> None:
    model, te = tiny
    ref = reference_trajectory(model, te.encode, SHAPE, SETTINGS)
    e = forced_errors(UncondNoise(model, ref.uncond), ref)
    assert e["cond"] == 0.0
    assert e["uncond"] == pytest.approx(0.05, rel=1e-4)
    # guided = v_u + 4 (v_c - v_u) with v_u 5% off: error 3 x 0.05 x ||v_u|| / ||v_g||, nonzero
    assert e["guided"] > 0.0


def test_guided_error_matches_the_harness(tiny) -> None:
    """The harness's teacher-forced column is the same guided error on the same trajectory."""
    model, te = tiny
    w4 = QuantizedWan.from_float(copy.deepcopy(model), QuantConfig.preset("w4a4"), init=True).eval()
    ref = reference_trajectory(model, te.encode, SHAPE, ForcedSettings(prompts=PROMPTS, seeds=(0,), num_steps=3))
    ours = forced_errors(w4, ref)
    rep = compare_models(
        {"float": model, "w4": w4},
        te.encode,
        SHAPE,
        EvalSettings(prompts=PROMPTS, seeds=(0,), num_steps=3),
        progress=False,
        keep_videos=False,
    )
    theirs = [row["teacher_forced"]["w4"] for row in rep["timesteps"]]
    assert [s["guided"] for s in ours["per_step"]] == pytest.approx(theirs, rel=1e-5)
