"""Tiny QAT runs for the trainer tests: a 2-block random-init Wan on 4x16x16 clips (64 tokens)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from qvgen_export.models.wan import TINY_WAN_CONFIG
from trainer.qat.config import TrainConfig

warnings.filterwarnings("ignore", category=DeprecationWarning)


def tiny_config(tmp_path, **overrides) -> TrainConfig:
    """A QAT config small enough for a few CPU steps per test (Phi rank 2: two decay stages)."""
    base = {
        "teacher": "random",
        "model_config": dict(TINY_WAN_CONFIG),
        "video_frames": 4,
        "video_height": 16,
        "video_width": 16,
        "batch_size": 2,
        "steps": 3,
        "phi_rank": 2,
        "lora_rank": 4,
        "save_every": 1,
        "threads": 0,  # leave the session's thread count alone
        "progress": False,
        "out_dir": str(tmp_path / "run"),
    }
    base.update(overrides)
    return TrainConfig.from_dict(base)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread is ~20x faster than two on a loaded 2-core machine (OpenMP
    workers spin while waiting); restored afterwards so other test modules are unaffected."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def make_config(tmp_path):
    def make(**overrides) -> TrainConfig:
        return tiny_config(tmp_path, **overrides)

    return make


@pytest.fixture(scope="session")
def tiny_teacher():
    """(float teacher, text encoder) shared by the in-process runs (train() never modifies it)."""
    from trainer.qat.loop import load_teacher_model

    return load_teacher_model(tiny_config(Path("/nonexistent")))
