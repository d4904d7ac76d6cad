"""qvgen-train interrupted at exact points (a clean stop, or SIGKILL inside a step, inside a state
save, while an old state is deleted, while the final model is written), then run again with the
same command in a fresh process: it completes, leaves no temp anywhere under the run folder,
``states/latest`` always names a complete hash-verified state, the final model is never
half-written, and the final TRAINING STATE (model, optimizer moments, every RNG, state.json) is
bit-identical to an uninterrupted run's.

Runs are forked from one server process that imported the trainer once (``forked_runs``), so
each of the 16 runs costs its training, not torch's and diffusers' imports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from forked_runs import ForkServer, leftovers_under
from safetensors.torch import load_file
from test_qat_ddp import _toml

from trainer.qat.state import read_state

STEPS = 4  # states after steps 1..4, two kept: the save after step 3 deletes step-0000001


def _config(folder: Path) -> list[str]:
    """argv of a tiny qvgen run whose out_dir is ``run`` relative to the working folder, so the
    saved config (and so state.json and the model's metadata) is the same in every folder."""
    folder.mkdir(parents=True, exist_ok=True)
    p = _toml(folder / "cfg.toml", Path("run"))
    p.write_text(
        p.read_text()
        .replace("steps = 3\n", f"steps = {STEPS}\nkeep_states = 2\n")
        .replace("save_every = 10", "save_every = 1")
    )
    return ["--config", str(p)]


@pytest.fixture(scope="module")
def server():
    s = ForkServer()
    yield s
    s.close()


@pytest.fixture(scope="module")
def reference(server, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ref")
    assert server.run(d, _config(d)) == {"code": 0}, (d / "log.txt").read_text()[-3000:]
    return d / "run"


def _state_json(folder: Path) -> dict[str, Any]:
    meta = json.loads((folder / "state.json").read_text())
    meta["last"].pop("step_time")  # wall time of the last step: the one thing that may differ
    return meta


def _assert_same_state(a: Path, b: Path) -> None:
    ta, tb = a / "tensors.safetensors", b / "tensors.safetensors"
    if ta.read_bytes() != tb.read_bytes():
        x, y = load_file(str(ta)), load_file(str(tb))
        diff = sorted(k for k in x.keys() | y.keys() if k not in x or k not in y or not x[k].equal(y[k]))
        raise AssertionError(f"training state {b.name} differs from the uninterrupted run's in {diff}")
    assert _state_json(a) == _state_json(b)


def _metrics(run: Path) -> list[dict[str, Any]]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("step_time", None)
    return recs


def _assert_consistent(run: Path, reference: Path) -> None:
    """What must hold at any moment, after any kill."""
    model = run / "model.safetensors"
    assert not model.exists() or model.read_bytes() == (reference / "model.safetensors").read_bytes()
    states = run / "states"
    if (states / "latest").exists():
        read_state(states / (states / "latest").read_text().strip())  # complete and hash-verified
    for p in states.glob("step-*"):
        read_state(p)  # no final name is ever a torn state


T3, T1 = "step-0000003", "step-0000001"
PLANS: dict[str, list[dict[str, Any]]] = {
    "stop-after": [{"stop_after": 2}],  # stopped cleanly in one process, resumed in a fresh one
    "mid-step": [{"point": "mid-step", "step": 3}],  # inside step 3 (of 1..4): backward done, no update
    "state-partial": [{"point": "partial", "target": T3}],  # 2 tensors of the state written
    "before-rename": [{"point": "before-rename", "target": T3}],  # state temp complete, not renamed
    # killed with step 3 renamed in but `latest` still naming step 2; the next run resumes from 2,
    # re-saves step 3 over the existing folder and is killed between the two renames of that overwrite
    "before-latest-then-aside": [{"point": "before-latest", "target": T3}, {"point": "aside", "target": T3}],
    "pruning": [{"point": "pruning", "target": T1}],  # deleting the oldest state after save 3
    "model-partial": [{"point": "partial", "target": "model.safetensors"}],  # final model half written
}


@pytest.mark.parametrize("plan", list(PLANS))
def test_interrupted_run_completes_like_an_uninterrupted_one(server, reference, tmp_path, plan):
    argv = _config(tmp_path)
    run = tmp_path / "run"
    for stop in PLANS[plan]:
        if "stop_after" in stop:
            r = server.run(tmp_path, [*argv, "--stop-after", str(stop["stop_after"])])
            assert r == {"code": 0}, (tmp_path / "log.txt").read_text()[-3000:]
        else:
            r = server.run(tmp_path, argv, kill=stop)
            assert r == {"signal": 9}, f"never reached {stop}: {r}\n" + (tmp_path / "log.txt").read_text()[-3000:]
        _assert_consistent(run, reference)
    r = server.run(tmp_path, argv)  # the same command again
    assert r == {"code": 0}, (tmp_path / "log.txt").read_text()[-3000:]
    assert leftovers_under(run) == []
    _assert_consistent(run, reference)
    assert (run / "states" / "latest").read_text().strip() == f"step-{STEPS:07d}"
    assert sorted(p.name for p in (run / "states").glob("step-*")) == sorted(
        p.name for p in (reference / "states").glob("step-*")
    )
    _assert_same_state(reference / "states" / f"step-{STEPS:07d}", run / "states" / f"step-{STEPS:07d}")
    assert (run / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    assert _metrics(run) == _metrics(reference)
