"""channel_spread reaches the trainer: flag, config record, a spread teacher and student, resume check."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from qvgen_tinyworld.channel_spread import ChannelSpread, apply_channel_spread, channel_spread_of
from trainer.qat.cli import config_from_args
from trainer.qat.loop import load_teacher_model, train


def test_flag_and_config(make_config) -> None:
    assert config_from_args([])[0].channel_spread is False  # off by default: earlier results stay valid
    assert config_from_args(["--channel-spread"])[0].channel_spread is True
    cfg = make_config(channel_spread=True)
    assert cfg.to_dict()["channel_spread"] is True
    teacher, _ = load_teacher_model(cfg)
    assert channel_spread_of(teacher) == ChannelSpread().to_dict()
    assert channel_spread_of(load_teacher_model(make_config())[0]) is None


def test_student_and_teacher_are_spread(make_config, tiny_teacher, tmp_path) -> None:
    teacher, te = tiny_teacher
    cfg = make_config(method="qdm", steps=2, channel_spread=True, save_every=10)
    res = train(cfg, teacher, te)
    assert channel_spread_of(teacher) is None  # the caller's teacher is not modified
    assert channel_spread_of(res.teacher) == ChannelSpread().to_dict()  # distillation target
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"event": "channel_spread", "step": 0, **ChannelSpread().to_dict()} in events
    # The student was quantized from the spread teacher: its to_v rows carry the factors.
    teacher_copy = copy.deepcopy(teacher)
    ref = apply_channel_spread(teacher_copy)
    rows = ref["blocks.0.attn1"]["channels"]
    w_student = res.qmodel.quant_linears()["blocks.0.attn1.to_v"].weight.detach()
    w_plain = teacher.blocks[0].attn1.to_v.weight.detach()
    assert (w_student[rows].norm(dim=1) / w_plain[rows].norm(dim=1)).min() > 5
    assert torch.allclose(w_student, teacher_copy.blocks[0].attn1.to_v.weight, atol=1e-2)
    # A spread teacher with the option off is refused; a spread teacher with it on is used as is.
    with pytest.raises(ValueError, match="channel_spread is off"):
        train(make_config(method="qdm", steps=2, out_dir=str(tmp_path / "r2")), teacher_copy, te)


def test_resume_refuses_other_setting(make_config, tiny_teacher, tmp_path) -> None:
    teacher, te = tiny_teacher
    run = str(tmp_path / "r")
    train(make_config(method="lsq", steps=2, channel_spread=True, stop_after=1, out_dir=run), teacher, te)
    with pytest.raises(ValueError, match="channel_spread"):
        train(make_config(method="lsq", steps=2, out_dir=run), teacher, te)


def test_resume_of_a_run_saved_before_the_option(make_config, tiny_teacher, tmp_path) -> None:
    """A state whose config has no channel_spread key (saved before it existed) resumes with it off."""
    teacher, te = tiny_teacher
    run = str(tmp_path / "old")
    train(make_config(method="lsq", steps=2, stop_after=1, out_dir=run), teacher, te)
    for p in (tmp_path / "old" / "states").glob("step-*/state.json"):
        meta = json.loads(p.read_text())
        del meta["config"]["channel_spread"]
        p.write_text(json.dumps(meta))
    assert train(make_config(method="lsq", steps=2, out_dir=run), teacher, te).completed
