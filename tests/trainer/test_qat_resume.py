"""A killed run resumes from its last training state and ends bit-exactly where an uninterrupted one does."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from qvgen_export.checkpoint.format import write_checkpoint_file
from trainer.qat.loop import train
from trainer.qat.state import STATE_FORMAT, StateError, latest_state


def _final(run_dir):
    state = load_file(str(latest_state(run_dir) / "tensors.safetensors"))
    return state, load_file(str(run_dir / "model.safetensors"))


def test_resume_is_bit_exact(tmp_path, make_config, tiny_teacher):
    # 6 steps, Phi rank 2: stages of 2 steps (re-SVD at 2, Phi deleted at 4), 2 final steps.
    common = {"method": "qvgen", "steps": 6, "save_every": 2, "final_phase_frac": 0.3}
    ref = make_config(out_dir=str(tmp_path / "ref"), **common)
    res = train(ref, *tiny_teacher)
    assert [e["event"] for e in res.events] == ["phi_init", "resvd", "phi_deleted"]

    run = make_config(out_dir=str(tmp_path / "killed"), **common)
    # Killed after 3 steps: the last state is after step 2 (saved every 2), step 2 is redone.
    r1 = train(run.replace(stop_after=3), *tiny_teacher)
    assert not r1.completed and r1.checkpoint is None
    assert latest_state(tmp_path / "killed").name == "step-0000002"
    # Killed again inside the final phase region, then finished.
    r2 = train(run.replace(stop_after=3), *tiny_teacher)
    assert r2.history[0]["step"] == 2 and not r2.completed
    r3 = train(run, *tiny_teacher)
    assert r3.completed and r3.history[0]["step"] == 4

    (s_ref, m_ref), (s_run, m_run) = _final(tmp_path / "ref"), _final(tmp_path / "killed")
    assert s_ref.keys() == s_run.keys() and m_ref.keys() == m_run.keys()
    for k in s_ref:
        assert torch.equal(s_ref[k], s_run[k]), k
    for k in m_ref:
        assert torch.equal(m_ref[k], m_run[k]), k

    # The log holds each step exactly once, with the same losses.
    def losses(d):
        recs = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in recs if "loss" in r]

    assert losses(tmp_path / "ref") == losses(tmp_path / "killed")


def test_torn_state_is_ignored(tmp_path, make_config, tiny_teacher):
    run = make_config(method="qdm", steps=2, save_every=1)
    train(run.replace(stop_after=1), *tiny_teacher)
    states = tmp_path / "run" / "states"
    # A kill during the next save leaves only a hidden temp folder and an unchanged pointer.
    (states / ".step-0000002.abc.tmp").mkdir()
    (states / ".step-0000002.abc.tmp" / "tensors.safetensors").write_bytes(b"partial")
    assert latest_state(tmp_path / "run").name == "step-0000001"
    res = train(run, *tiny_teacher)
    assert res.completed and res.history[0]["step"] == 1


def test_resume_with_other_settings_is_refused(make_config, tiny_teacher):
    run = make_config(method="qdm", steps=2, save_every=1)
    train(run.replace(stop_after=1), *tiny_teacher)
    with pytest.raises(ValueError, match="the saved run has steps=2 but this config has steps=3"):
        train(run.replace(steps=3), *tiny_teacher)


@pytest.mark.parametrize(("prefix", "value"), [("model/", float("nan")), ("optim/", float("inf"))])
def test_non_finite_state_is_refused(tmp_path, make_config, tiny_teacher, prefix, value):
    """A NaN parameter or an Inf Adam moment, with valid digests (so only the finiteness check can
    catch it): resuming would train on garbage, so the state is refused in one line."""
    run = make_config(method="qdm", steps=2, save_every=1)
    train(run.replace(stop_after=1), *tiny_teacher)
    st = latest_state(tmp_path / "run")
    t = load_file(str(st / "tensors.safetensors"))
    k = next(k for k in sorted(t) if k.startswith(prefix) and t[k].is_floating_point() and t[k].numel() > 1)
    t[k].view(-1)[1] = value
    write_checkpoint_file(tmp_path / "forged.safetensors", t, {"format": STATE_FORMAT})  # fresh digests
    (tmp_path / "forged.safetensors").replace(st / "tensors.safetensors")
    with pytest.raises(StateError, match=f"tensors.safetensors: tensor '{k}' contains NaN or Inf"):
        train(run, *tiny_teacher)


def test_run_saved_before_lr_min_frac_existed_resumes_only_without_the_floor(make_config, tiny_teacher, tmp_path):
    """Such a run trained with cosine to 0: today's default floor (0.1) must not resume it."""
    teacher, te = tiny_teacher
    run = str(tmp_path / "old")
    train(make_config(method="lsq", steps=2, stop_after=1, lr_min_frac=0.0, out_dir=run), teacher, te)
    for p in (tmp_path / "old" / "states").glob("step-*/state.json"):
        meta = json.loads(p.read_text())
        del meta["config"]["lr_min_frac"]
        p.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="lr_min_frac=0.0 but this config has lr_min_frac=0.1"):
        train(make_config(method="lsq", steps=2, out_dir=run), teacher, te)
    assert train(make_config(method="lsq", steps=2, lr_min_frac=0.0, out_dir=run), teacher, te).completed
