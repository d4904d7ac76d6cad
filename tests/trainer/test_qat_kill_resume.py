"""A CLI run SIGKILLed mid-training resumes from its last state and ends bit-exactly like an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from test_qat_ddp import REPO, _toml


def _cmd(cfg: Path) -> list[str]:
    return [sys.executable, "-m", "trainer.qat.cli", "--config", str(cfg)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_sigkill_then_resume_is_bit_exact(tmp_path):
    def cfg(name: str) -> Path:
        p = _toml(tmp_path / f"{name}.toml", tmp_path / name)
        # 40 steps saved every 3: a window of a few seconds in which to kill the run mid-way.
        p.write_text(p.read_text().replace("steps = 3\n", "steps = 40\n").replace("save_every = 10", "save_every = 3"))
        return p

    ref, run = cfg("ref"), cfg("run")
    subprocess.run(_cmd(ref), cwd=REPO, env=_env(), check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(_cmd(run), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "run" / "states" / "latest"
    deadline = time.time() + 240
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.05)  # land somewhere between two saves, possibly inside one
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "run" / "model.safetensors").exists()
    subprocess.run(_cmd(run), cwd=REPO, env=_env(), check=True, capture_output=True, timeout=300)
    a = load_file(str(tmp_path / "ref" / "model.safetensors"))
    b = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
