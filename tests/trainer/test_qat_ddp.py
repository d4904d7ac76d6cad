"""torchrun, 2 CPU processes (gloo; DDP and FSDP2) == 1 process with the same global batch, within float tolerance."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qvgen_export.models.wan import TINY_WAN_CONFIG

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml(path: Path, out_dir: Path, strategy: str = "ddp") -> Path:
    mc = ", ".join(f"{k} = {json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in TINY_WAN_CONFIG.items())
    path.write_text(
        "[train]\n"
        f'method = "qvgen"\nteacher = "random"\nstrategy = "{strategy}"\n'
        "steps = 3\nbatch_size = 4\nphi_rank = 2\nsave_every = 10\nthreads = 1\nprogress = false\n"
        "video_frames = 4\nvideo_height = 16\nvideo_width = 16\n"
        f'out_dir = "{out_dir}"\n'
        f"model_config = {{ {mc} }}\n"
    )
    return path


def _run(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run(args, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("one")
    _run([sys.executable, "-m", "trainer.qat.cli", "--config", str(_toml(d / "one.toml", d / "out"))])
    return d / "out"


def _torchrun(entry: list[str], config: Path) -> None:
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            *entry,
            "--config",
            str(config),
        ]
    )


def assert_same_training(one: Path, two: Path) -> None:
    """The 2-process run trained the same model as the 1-process run, within the tolerance below."""
    a = load_file(str(one / "model.safetensors"))
    b = load_file(str(two / "model.safetensors"))
    assert a.keys() == b.keys()
    # Exact-in-float equality is not the contract for every element: the activation clips are
    # per timestep group, so a clip entry is trained by the one or two samples of its group, and
    # where that gradient is at rounding level its sign depends on the summation order (one
    # process vs an all-reduce over two). Adam turns either sign into a step of about lr_clip
    # (1e-2). So: a few elements may differ by at most a few such steps; a missing gradient
    # synchronisation moves many more (test_broken_allreduce_fails_the_comparison shows it does).
    for k in a:
        if a[k].dtype == torch.uint8:  # packed codes: a code may flip at a rounding boundary
            diff = (a[k] != b[k]).float().mean()
            assert diff < 0.01, k
        else:
            off = (a[k] - b[k]).abs() > 1e-5 + 1e-4 * b[k].abs()
            assert off.float().mean() <= 0.05, (k, float(off.float().mean()))
            torch.testing.assert_close(a[k], b[k], atol=3 * 3 * 1e-2, rtol=0, msg=k)
    la = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    losses_a = [r["loss"] for r in la if "loss" in r]
    losses_b = [r["loss"] for r in lb if "loss" in r]
    assert len(losses_a) == len(losses_b) == 3
    # Before any update, and after the first, the two runs agree to float precision; the third
    # loss sees the clip steps above.
    torch.testing.assert_close(torch.tensor(losses_b[:2]), torch.tensor(losses_a[:2]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(losses_b[2]), torch.tensor(losses_a[2]), atol=0, rtol=0.05)
    assert [r["event"] for r in lb if "event" in r] == ["phi_init", "resvd", "phi_deleted"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, one_process_run, strategy):
    two = _toml(tmp_path / "two.toml", tmp_path / "two", strategy)
    _torchrun(["-m", "trainer.qat.cli"], two)
    assert_same_training(one_process_run, tmp_path / "two")


def test_broken_allreduce_fails_the_comparison(tmp_path, one_process_run):
    """The comparison above has the power to see a missing gradient synchronisation."""
    two = _toml(tmp_path / "two.toml", tmp_path / "two", "ddp")
    _torchrun([str(Path(__file__).with_name("no_allreduce_mutant.py"))], two)
    with pytest.raises(AssertionError):
        assert_same_training(one_process_run, tmp_path / "two")
